"""The TLS flags shared by ``serve``, ``up`` and ``generate --server``, and the ``TlsConfig``
they give (a flag wins over its SPECGROVE_TLS_* variable)."""

from __future__ import annotations

import os

from specgrove.config import TLS_ENV
from specgrove.tls import TlsConfig

SERVER_ONLY = ("client_ca",)


def add_tls_flags(parser, server: bool) -> None:
    """--tls-cert, --tls-key, --tls-ca, --tls-server-name, and --tls-client-ca when ``server``."""
    for name, (variable, meaning) in TLS_ENV.items():
        if server or name not in SERVER_ONLY:
            parser.add_argument(f"--tls-{name.replace('_', '-')}", default=None, help=f"{meaning} (${variable})")


def tls_from(args, environ=None) -> TlsConfig:
    flags = {name: getattr(args, f"tls_{name}", None) for name in TLS_ENV}
    return TlsConfig.from_env(os.environ if environ is None else environ, **flags)


def tls_environ(tls: TlsConfig) -> dict[str, str]:
    """The SPECGROVE_TLS_* variables that give ``tls`` to a child process (``up``'s roles)."""
    return {variable: getattr(tls, name) for name, (variable, _) in TLS_ENV.items() if getattr(tls, name)}
