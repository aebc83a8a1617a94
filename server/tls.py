"""A self-signed development certificate, so phones on the LAN can use their cameras: browsers give
cameras only to https pages (or localhost).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.origins import machine_addresses, machine_names

log = logging.getLogger(__name__)

DEFAULT_FOLDER = Path.home() / ".cache" / "live-diffusion" / "tls"
VALID_DAYS = 365
RENEW_DAYS = 7  # make a new one this long before it expires


def _covers(certificate: x509.Certificate, names: list[str], addresses: list[str]) -> bool:
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    has_names = set(alt.get_values_for_type(x509.DNSName))
    has_addresses = {str(a) for a in alt.get_values_for_type(x509.IPAddress)}
    fresh = certificate.not_valid_after_utc - datetime.timedelta(days=RENEW_DAYS) > datetime.datetime.now(datetime.timezone.utc)
    return (
        fresh
        and _is_leaf(certificate)
        and set(names) <= has_names
        and {str(ipaddress.ip_address(a)) for a in addresses} <= has_addresses
    )


def _is_leaf(certificate: x509.Certificate) -> bool:
    """Not a CA (earlier versions made one; browsers refuse a CA certificate as a server's)."""
    try:
        return not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner may read, from its first byte: made under a temporary name with
    mode 0600, then renamed over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def self_signed_certificate(folder: Path = DEFAULT_FOLDER) -> tuple[Path, Path]:
    """(certificate, key) PEM files for this machine's names and addresses, made once and reused
    while they still cover them and are not about to expire."""
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    names, addresses = machine_names(), machine_addresses()
    if cert_path.is_file() and key_path.is_file():
        if _covers(x509.load_pem_x509_certificate(cert_path.read_bytes()), names, addresses):
            return cert_path, key_path

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Live Diffusion on {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            ),
            critical=False,
        )
        # A leaf: a server's certificate, not an authority that could vouch for others.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("Made a self-signed certificate for %s in %s", ", ".join(names + addresses), folder)
    return cert_path, key_path
