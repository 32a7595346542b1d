"""Transport security of every link: TLS settings (read once at the edge), and the two things
built from them, a client channel to an address and a server port, secure or plaintext.

One ``TlsConfig`` per process serves both directions, as a role is both a server and a client:
- ``cert`` + ``key``: this process's certificate; its servers speak TLS with it, and it is the
  client certificate it presents when it calls another role (mTLS);
- ``ca``: the CA bundle that signed the servers it calls; set, its outgoing channels are TLS;
- ``client_ca``: its servers require a client certificate signed by this CA (mTLS);
- ``server_name``: the name checked in a server's certificate when it differs from the host dialed.
Nothing set: plaintext both ways (the loopback default). It lives in the base layer because the
orchestrator (layer 2) opens channels to the workers itself; it imports only grpc and ssl.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from specgrove.config import TLS_ENV
from specgrove.errors import InvalidArgument
from specgrove.limits import DEFAULT_LIMITS


@dataclass(frozen=True)
class TlsConfig:
    cert: str | None = None  # PEM certificate chain of this process (server; client certificate for mTLS)
    key: str | None = None  # PEM private key of cert
    ca: str | None = None  # PEM CA bundle trusted for the servers this process calls: outgoing TLS
    client_ca: str | None = None  # PEM CA bundle clients must be signed by: mTLS on this process's servers
    server_name: str | None = None  # name expected in servers' certificates (default: the host dialed)

    def __post_init__(self):
        if bool(self.cert) != bool(self.key):
            raise InvalidArgument("tls", "a certificate and its key go together (--tls-cert with --tls-key)")
        if self.client_ca and not self.cert:
            raise InvalidArgument("tls", "--tls-client-ca (mTLS) needs the server's own --tls-cert and --tls-key")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **flags: str | None) -> TlsConfig:
        """Flags (field=value, None when not given) over environment variables."""
        return cls(**{name: flags.get(name) or environ.get(variable) or None for name, (variable, _) in TLS_ENV.items()})

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert)

    @property
    def dials_tls(self) -> bool:
        return bool(self.ca)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(_read(tls.key), _read(tls.cert))], root_certificates=_read(tls.client_ca),
                                       require_client_auth=bool(tls.client_ca))


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Trust ``ca``; present ``cert`` as the client certificate when this process has one."""
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca), private_key=_read(tls.key),
                                        certificate_chain=_read(tls.cert))


def open_channel(address: str, tls: TlsConfig | None, options: Sequence[tuple[str, object]] = (), aio: bool = False,
                 name: str | None = None):
    """A channel to ``address``: TLS when ``tls.ca`` is set, plaintext otherwise; ``aio`` for asyncio.
    Message sizes default to ``Limits()``'s (both directions) unless ``options`` set them.
    ``name``: the host name ``address`` was resolved from (a pod behind a Service's name), which
    its certificate carries; a configured ``tls.server_name`` comes first."""
    grpc_mod = grpc.aio if aio else grpc
    options = list({**dict(DEFAULT_LIMITS.grpc_options()), **dict(options)}.items())
    if tls is None or not tls.dials_tls:
        return grpc_mod.insecure_channel(address, options=options)
    if tls.server_name or name:
        options.append(("grpc.ssl_target_name_override", tls.server_name or name))
    return grpc_mod.secure_channel(address, channel_credentials(tls), options=options)


def add_port(server, address: str, tls: TlsConfig | None) -> int:
    """Bind ``address`` on a grpc (or grpc.aio) server, TLS when ``tls.cert`` is set; the bound port."""
    if tls is not None and tls.serves_tls:
        port = server.add_secure_port(address, server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot bind {address}")
    return port


def ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The HTTP API's server context (None: plain HTTP), with the same certificate and mTLS rule."""
    if tls is None or not tls.serves_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
