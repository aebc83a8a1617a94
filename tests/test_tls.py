"""--self-signed: https with a development certificate for this machine's names and addresses."""

import ssl

import httpx
from cryptography import x509

from bench.live import run_server
from server import origins, tls


def test_certificate_covers_this_machine_and_is_reused(tmp_path):
    cert_path, key_path = tls.self_signed_certificate(tmp_path)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in alt.get_values_for_type(x509.DNSName)
    assert {str(a) for a in alt.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", *origins.lan_addresses()}
    assert key_path.stat().st_mode & 0o077 == 0  # the key is private
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca  # a leaf, not an authority
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert tls.self_signed_certificate(tmp_path) == (cert_path, key_path)
    assert cert_path.read_bytes() == tls.self_signed_certificate(tmp_path)[0].read_bytes()  # not remade


def test_the_key_is_never_readable_by_others_not_even_while_written(tmp_path, monkeypatch):
    """The key file is created with mode 0600 (not written, then restricted), whatever the umask."""
    modes = []
    real_open = tls.os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        descriptor = real_open(path, flags, mode, *args, **kwargs)
        if flags & tls.os.O_CREAT:
            modes.append(tls.os.fstat(descriptor).st_mode & 0o777)
        return descriptor

    monkeypatch.setattr(tls.os, "open", recording_open)
    old_umask = tls.os.umask(0)  # the most permissive: nothing masks a lax mode
    try:
        _, key_path = tls.self_signed_certificate(tmp_path)
    finally:
        tls.os.umask(old_umask)
    assert modes == [0o600]
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_an_authority_certificate_from_an_earlier_version_is_replaced(tmp_path):
    cert_path, _ = tls.self_signed_certificate(tmp_path)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    authority = (
        x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(old.not_valid_before_utc).not_valid_after(old.not_valid_after_utc)
        .add_extension(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    new_cert, _ = tls.self_signed_certificate(tmp_path)
    remade = x509.load_pem_x509_certificate(new_cert.read_bytes())
    assert not remade.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_serves_https_with_it(tmp_path):
    env_home = {"HOME": str(tmp_path)}  # the certificate goes under ~/.cache/live-diffusion/tls
    from bench.live import server_env

    with run_server("--pipeline", "bench.echo_pipeline", "--self-signed", env=server_env(**env_home)) as server:
        line = server.wait_for_log("Open https://")
        cert = tmp_path / ".cache" / "live-diffusion" / "tls" / "cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        health = httpx.get(f"https://127.0.0.1:{server.port}/api/health", verify=context, timeout=10)
        assert health.json()["status"] == "ok"
        assert f"https://127.0.0.1:{server.port}" in line
