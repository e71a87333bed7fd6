"""Mutual-TLS listener for daphne, as a Twisted endpoint plugin.

``mtls:port=8443:interface=127.0.0.1:certKey=server.pem:privateKey=server.key:caCerts=ca.pem``
listens with TLS 1.2 or newer and *requires* a client certificate that
chains to one of the CAs in ``caCerts``. A client without one fails the
handshake. The plugin module in ``twisted/plugins/`` registers the parser,
because Twisted discovers endpoint types only through that package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["MutualTLSEndpointParser", "client_ca_options", "endpoint_description", "quote_endpoint_value"]


def _load_pem_certificates(path: str) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path}: no PEM certificate could be read ({exc})") from None
    return certificates


class _ClientCertificateOptions(ssl.CertificateOptions):
    """CertificateOptions that also advertises the client CAs in the handshake.

    The list of acceptable CA names lets a client with several certificates
    pick the right one.
    """

    def __init__(self, *args: Any, client_ca_names: list[crypto.X509Name], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_ca_names = client_ca_names

    def getContext(self) -> SSL.Context:
        context = super().getContext()
        # CertificateOptions builds one context and returns it for every
        # connection. Setting the list again on each call breaks later
        # handshakes, so it is set on the first call only.
        if self._client_ca_names:
            context.set_client_ca_list(self._client_ca_names)
            self._client_ca_names = []
        return context


def client_ca_options(cert_file: str, key_file: str, ca_file: str) -> ssl.CertificateOptions:
    """Build server TLS options that require a client certificate signed by a CA in ``ca_file``."""
    server_chain = _load_pem_certificates(cert_file)
    private_key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    authorities = _load_pem_certificates(ca_file)
    trusted = [ssl.Certificate(crypto.X509.from_cryptography(ca)) for ca in authorities]

    return _ClientCertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(private_key),
        certificate=crypto.X509.from_cryptography(server_chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(cert) for cert in server_chain[1:]],
        trustRoot=ssl.trustRootFromCertificates(trusted),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        client_ca_names=[crypto.X509.from_cryptography(ca).get_subject() for ca in authorities],
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSEndpointParser:
    """Parses ``mtls:`` endpoint descriptions for ``serverFromString``."""

    prefix = "mtls"

    def parseStreamServer(
        self,
        reactor: Any,
        port: str,
        certKey: str,
        privateKey: str,
        caCerts: str,
        interface: str = "",
        backlog: str = "128",
    ) -> SSL4ServerEndpoint:
        options = client_ca_options(certKey, privateKey, caCerts)
        return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


def quote_endpoint_value(value: str) -> str:
    """Escape a value for a Twisted endpoint description (``:``, ``=`` and ``\\``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_description(*, host: str, port: int, cert: str, key: str, client_ca: str) -> str:
    parts = [
        "mtls",
        f"port={port}",
        f"interface={quote_endpoint_value(host.strip('[]'))}",
        f"certKey={quote_endpoint_value(str(Path(cert).resolve()))}",
        f"privateKey={quote_endpoint_value(str(Path(key).resolve()))}",
        f"caCerts={quote_endpoint_value(str(Path(client_ca).resolve()))}",
    ]
    return ":".join(parts)
