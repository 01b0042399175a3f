"""Key material for a Flower deployment, made with ``cryptography``: a private CA, the
SuperLink's TLS certificate, SuperNode authentication keys and privsem's identity keys.

Every private key is written once, to a new file only its owner may read (mode 0600, created
with O_EXCL: an existing file is never overwritten), and read back only from such a file.
Nothing here is sent anywhere: the trial hands each process the paths it needs, as an operator
would copy them to their hosts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privsem.aggregation.masked.crypto import Identity
from privsem.errors import ConfigError


def write_secret(path: Path, data: bytes) -> None:
    """Creates ``path`` (mode 0600) holding ``data``; refuses an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def read_secret(path: Path) -> bytes:
    """The bytes of a private key file; refuses one that others may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), oct(mode & 0o777), "a private key file must be readable "
                          "by its owner only: chmod 600 it")
    return path.read_bytes()


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, days: float,
          names: tuple[str, ...] = (), start: dt.datetime | None = None) -> x509.Certificate:
    now = start or dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                        critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        b = (b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False))
    return b.sign(issuer_key, hashes.SHA384())


def make_ca(folder: Path, name: str = "privsem-ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate, private key) paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = _cert(name, key, subject, key, ca=True, days=30)
    crt, pk = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret(pk, _pem(key))
    return crt, pk


def issue_server_cert(folder: Path, ca: tuple[Path, Path], *, name: str = "superlink",
                      hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: float = 7,
                      start: dt.datetime | None = None) -> tuple[Path, Path]:
    """A TLS server certificate for ``hosts`` signed by ``ca``: (certificate, key) paths.
    ``start`` and a negative ``days`` make an expired one (for the refusal tests)."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(read_secret(ca[1]), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(str(ca[1]), "not EC", "give the CA key made by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(hosts[0], key, ca_cert.subject, ca_key, ca=False, days=days, names=hosts,
                 start=start)
    crt, pk = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret(pk, _pem(key))
    return crt, pk


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (EC P-384, OpenSSH format, as Flower reads them):
    (private, public) paths. The public half is registered with the SuperLink."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / f"node-{name}", folder / f"node-{name}.pub"
    write_secret(priv, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


def write_identity(path: Path) -> bytes:
    """A new privsem identity (Ed25519) whose private key goes to ``path`` (0600, never
    overwritten); returns its public key for the registry."""
    key = Ed25519PrivateKey.generate()
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return Identity(key).public


def read_identity(path: Path) -> Identity:
    key = serialization.load_pem_private_key(read_secret(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), type(key).__name__, "give an Ed25519 identity key "
                          "written by privsem")
    return Identity(key)
