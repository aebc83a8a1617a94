"""--self-signed: https with a development certificate for this machine's names and addresses."""

import ssl

import httpx
from cryptography import x509

from server import tls
from tests.live import run_server


def test_certificate_covers_this_machine_and_is_reused(tmp_path):
    cert_path, key_path = tls.self_signed_certificate(tmp_path)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in alt.get_values_for_type(x509.DNSName)
    assert {str(a) for a in alt.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", *tls.lan_addresses()}
    assert key_path.stat().st_mode & 0o077 == 0  # the key is private
    assert tls.self_signed_certificate(tmp_path) == (cert_path, key_path)
    assert cert_path.read_bytes() == tls.self_signed_certificate(tmp_path)[0].read_bytes()  # not remade


def test_server_serves_https_with_it(tmp_path):
    env_home = {"HOME": str(tmp_path)}  # the certificate goes under ~/.cache/live-diffusion/tls
    from tests.live import server_env

    with run_server("--pipeline", "bench.echo_pipeline", "--self-signed", env=server_env(**env_home)) as server:
        line = server.wait_for_log("Open https://")
        cert = tmp_path / ".cache" / "live-diffusion" / "tls" / "cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        health = httpx.get(f"https://127.0.0.1:{server.port}/api/health", verify=context, timeout=10)
        assert health.json()["status"] == "ok"
        assert f"https://127.0.0.1:{server.port}" in line
