"""Registers the ``mtls:`` server endpoint with Twisted.

Twisted finds endpoint parsers only as objects in modules of the
``twisted.plugins`` package, which includes any ``twisted/plugins``
directory on sys.path that has no ``__init__.py``. The project root is on
sys.path whenever ``manage.py`` runs, so this module is found there.
"""

from realtime.tls import MutualTLSEndpointParser

mutual_tls_endpoint = MutualTLSEndpointParser()
