"""A throwaway PKI for the TLS tests (the ``cryptography`` package): a CA, a certificate for
127.0.0.1 / localhost good for both server and client use (as every role is both), and a second,
unrelated CA with a client certificate of its own (a stranger)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from specgrove.tls import TlsConfig


@dataclass(frozen=True)
class Pki:
    ca: str  # PEM paths
    cert: str
    key: str
    stranger_ca: str
    stranger_cert: str
    stranger_key: str

    def server(self, mtls: bool = False) -> TlsConfig:
        """A role: serves TLS (requiring client certificates when ``mtls``) and dials with TLS + its cert."""
        return TlsConfig(cert=self.cert, key=self.key, ca=self.ca, client_ca=self.ca if mtls else None)

    def client(self, with_cert: bool = True) -> TlsConfig:
        return TlsConfig(ca=self.ca, cert=self.cert if with_cert else None, key=self.key if with_cert else None)

    def stranger(self) -> TlsConfig:
        """Trusts the right CA but presents a certificate from another one."""
        return TlsConfig(ca=self.ca, cert=self.stranger_cert, key=self.stranger_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = (builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key=None) -> tuple[str, str]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def make_pki(directory: Path) -> Pki:
    paths = {}
    for prefix in ("", "stranger_"):
        ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = f"specgrove test {prefix or 'main '}CA".replace("_", " ")
        ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
        paths[f"{prefix}ca"], _ = _write(directory, f"{prefix}ca", ca)
        paths[f"{prefix}cert"], paths[f"{prefix}key"] = _write(
            directory, f"{prefix}role", _issue("specgrove role", leaf_key, ca_name, ca_key, ca=False), leaf_key)
    return Pki(**paths)
