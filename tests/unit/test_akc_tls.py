"""hatchway-keys over https, with a private CA and client certificates made
by `openssl` for this test run, against the ContainerSSH reference server
behind TLS that requires a client certificate (mTLS)."""

import shutil
import ssl
import subprocess

import pytest

from tests.e2e.webhook_servers import ContainerSSHServer

from .akc_run import assert_denied, helper_env, run_keys, write_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_cert(d, ca, name, ext):
    (d / f"{name}.ext").write_text(ext)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "other-ca", "impostor", "subjectAltName=IP:127.0.0.1\n")
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helper_env(tmp_path_factory.mktemp("akc-tls"))


def server_context(pki, cert="server"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def mtls(pki):
    srv = ContainerSSHServer.reference(tls_context=server_context(pki))
    yield srv
    srv.close()


def ask(env, tmp_path, url, **webhook):
    cfg = write_config(tmp_path, url, {k: str(v) for k, v in webhook.items()}, {"ttl": "0s"})
    return run_keys(env["entry"], cfg, "foo", env["type"], env["key"])


def test_mtls_with_the_client_certificate_is_a_yes(env, tmp_path, pki, mtls):
    r = ask(env, tmp_path, mtls.url, ca_file=pki / "ca.crt", cert_file=pki / "client.crt",
            key_file=pki / "client.key")
    assert r.stdout == f"restrict,pty {env['type']} {env['key']}\n".encode()
    assert mtls.calls() == 1


def test_mtls_without_a_client_certificate_is_refused(env, tmp_path, pki, mtls):
    r = ask(env, tmp_path, mtls.url, ca_file=pki / "ca.crt")
    assert_denied(r, "")
    assert mtls.calls() == 0


def test_mtls_with_a_certificate_from_another_ca_is_refused(env, tmp_path, pki, mtls):
    r = ask(env, tmp_path, mtls.url, ca_file=pki / "ca.crt", cert_file=pki / "stranger.crt",
            key_file=pki / "stranger.key")
    assert_denied(r, "")
    assert mtls.calls() == 0


def test_a_server_the_ca_did_not_sign_is_refused(env, tmp_path, pki):
    srv = ContainerSSHServer.reference(tls_context=server_context(pki, "impostor"))
    try:
        r = ask(env, tmp_path, srv.url, ca_file=pki / "ca.crt", cert_file=pki / "client.crt",
                key_file=pki / "client.key")
        assert_denied(r, "CERTIFICATE_VERIFY_FAILED")
        assert srv.calls() == 0
    finally:
        srv.close()


def test_the_system_cas_do_not_vouch_for_a_private_server(env, tmp_path, pki, mtls):
    r = ask(env, tmp_path, mtls.url, cert_file=pki / "client.crt", key_file=pki / "client.key")
    assert_denied(r, "CERTIFICATE_VERIFY_FAILED")


def test_plain_http_to_a_tls_server_is_refused(env, tmp_path, pki, mtls):
    r = ask(env, tmp_path, mtls.url.replace("https:", "http:"))
    assert_denied(r, "")


@pytest.mark.parametrize("which", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_files_are_refused(env, tmp_path, pki, mtls, which):
    files = {"ca_file": pki / "ca.crt", "cert_file": pki / "client.crt",
             "key_file": pki / "client.key"}
    files[which] = tmp_path / "missing.pem"
    r = ask(env, tmp_path, mtls.url, **files)
    assert_denied(r, "TLS setup failed")
    assert mtls.calls() == 0
