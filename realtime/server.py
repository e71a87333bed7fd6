"""daphne ``Server`` subclass that reports TLS details in the ASGI scope.

daphne builds each connection's scope and hands it to
``Server.create_application``. This subclass adds, before the application
receives the scope:

- ``scope["extensions"]["tls"]`` for connections to a TLS listener,
  following the ASGI TLS extension: ``server_cert``, ``client_cert_chain``
  (PEM strings, the client's certificate first), ``client_cert_name``
  (RFC 4514), ``client_cert_error``, ``tls_version`` (e.g. 0x0304) and
  ``cipher_suite`` (None: pyOpenSSL does not expose its IANA number);
- ``scope["server"] = [path, None]`` for connections over a unix socket, as
  the ASGI spec describes, so identity can tell the proxy's socket apart.

It also resets ``scope["root_path"]`` to the server's own root path: daphne
takes it from any request's ``Daphne-Root-Path`` header, which a client
could otherwise send to change how Django routes its request.

Finally, it makes autobahn respond to an oversized frame with a close frame (1009)
that the client can read, instead of dropping the TCP connection.
"""

from __future__ import annotations

import sys
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from daphne.server import Server
from twisted.internet import reactor
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport

__all__ = ["MutualTLSServer", "tls_extension"]

# Cached per TLS connection, because every HTTP request on a keep-alive
# connection would otherwise convert the same certificates again.
_CACHE_ATTRIBUTE = "_realtime_tls_extension"


def tls_extension(transport: Any) -> dict[str, Any] | None:
    """Return the ASGI TLS extension for a transport, or None when it is not TLS."""
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    cached = getattr(transport, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return cached

    connection = transport.getHandle()
    leaf = connection.get_peer_certificate(as_cryptography=True)
    chain = []
    if leaf is not None:
        chain.append(leaf)
        for certificate in connection.get_peer_cert_chain(as_cryptography=True) or []:
            if certificate != leaf:
                chain.append(certificate)
    own = connection.get_certificate(as_cryptography=True)

    extension = {
        "server_cert": own.public_bytes(Encoding.PEM).decode() if own is not None else None,
        "client_cert_chain": [certificate.public_bytes(Encoding.PEM).decode() for certificate in chain],
        "client_cert_name": leaf.subject.rfc4514_string() if leaf is not None else None,
        "client_cert_error": None,
        "tls_version": connection.get_protocol_version() or None,
        "cipher_suite": None,
    }
    setattr(transport, _CACHE_ATTRIBUTE, extension)
    return extension


class MutualTLSServer(Server):
    """daphne's server with TLS details in the scope; see the module docstring."""

    def run(self) -> None:
        reactor.callWhenRunning(self._configure_websocket_factory)
        super().run()

    def _configure_websocket_factory(self) -> None:
        # Runs at reactor start-up, before any connection is served.
        self.ws_factory.setProtocolOptions(failByDrop=False)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        transport = getattr(protocol, "transport", None)
        if transport is None and getattr(protocol, "channel", None) is not None:
            transport = protocol.channel.transport
        scope["root_path"] = self.root_path
        extension = tls_extension(transport)
        if extension is not None:
            scope["extensions"] = {**scope.get("extensions", {}), "tls": extension}
        elif transport is not None and isinstance(transport.getHost(), UNIXAddress):
            name = transport.getHost().name
            scope["server"] = [name.decode() if isinstance(name, bytes) else name, None]
        return super().create_application(protocol, scope)

    def listen_success(self, port: Any) -> None:
        super().listen_success(port)
        address = port.getHost()
        if isinstance(address, UNIXAddress):
            name = address.name.decode() if isinstance(address.name, bytes) else address.name
            print(f"Listening on unix:{name}", flush=True)
        else:
            print(f"Listening on https://{address.host}:{address.port}", flush=True)
        sys.stdout.flush()
