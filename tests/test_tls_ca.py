"""Which CA certificates HTTPS uploads trust (issue 15): DDLOCK_CA_FILE /
ca_file wins; else SSL_CERT_FILE and/or SSL_CERT_DIR (OpenSSL's variables);
else the system bundle found in the usual places. Checked against a real TLS
receiver on loopback whose certificate is signed by a CA made here with the
openssl command; a CA it does not know fails verification: no data is
accepted and the failure is counted."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, python_env
from _receivers import Receiver

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (make deps)")

PROGRAM = textwrap.dedent("""
    import json, logging, sys, threading
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="LOG %(levelname)s %(message)s")
    import ddlock
    ddlock.start(capture_pct=100, upload_interval=60)
    lock = threading.Lock()
    with lock:
        pass
    ddlock.flush()
    print("@@stats " + json.dumps(ddlock.stats()), flush=True)
    ddlock.stop(flush=False)
""")


def openssl(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT_")}
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, env=env)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
            "-out", name + ".pem", "-subj", "/CN=ddlock test %s" % name, "-days", "1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return os.path.join(d, name + ".pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext", cwd=d)
    hashed = os.path.join(d, "hashed")
    os.mkdir(hashed)
    shutil.copy(ca, os.path.join(hashed, "ddlock-test-ca.pem"))
    try:
        openssl("rehash", hashed, cwd=d)
    except subprocess.CalledProcessError:
        if shutil.which("c_rehash") is None:
            pytest.skip("neither openssl rehash nor c_rehash")
        subprocess.run(["c_rehash", hashed], check=True, stdout=subprocess.DEVNULL)
    assert any(re.match(r"[0-9a-f]{8}\.0$", n) for n in os.listdir(hashed)), os.listdir(hashed)
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, "server.pem"), os.path.join(d, "server.key"))
    return {"ctx": ctx, "ca": ca, "other": other, "dir": hashed}


def upload(pki, tmp_path, **env):
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    with Receiver(ssl_context=pki["ctx"]) as rcv:
        full = {"SSL_CERT_FILE": "", "SSL_CERT_DIR": "", "DD_PROFILING_DEBUG": "true",
                "DD_TRACE_AGENT_URL": rcv.url}
        full.update(env)
        proc = subprocess.run([sys.executable, str(prog)], env=python_env(full), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    stats = json.loads(proc.stdout.split("@@stats ", 1)[1])
    ca_lines = [ln for ln in proc.stderr.splitlines() if "TLS CA certificates" in ln]
    assert len(ca_lines) == 1, proc.stderr
    return stats, rcv, ca_lines[0]


def assert_accepted(stats, rcv):
    assert (stats["uploads_ok"], stats["uploads_failed"]) == (1, 0), stats
    assert len(rcv.requests) == 1 and rcv.requests[0].path == "/profiling/v1/input"
    assert rcv.requests[0].tls["version"].startswith("TLS")


def assert_refused(stats, rcv):
    # the handshake fails: nothing was sent, the failure is counted
    assert (stats["uploads_ok"], stats["uploads_failed"]) == (0, 1), stats
    assert stats["upload_retries"] == 0
    assert re.search(r"ssl|certificate", stats["last_error"], re.I), stats["last_error"]
    assert rcv.requests == [] and rcv.tls_errors, (rcv.requests, rcv.errors)


def test_ssl_cert_file(pki, tmp_path):
    stats, rcv, line = upload(pki, tmp_path, SSL_CERT_FILE=pki["ca"])
    assert_accepted(stats, rcv)
    assert "file %s, directory - (SSL_CERT_FILE/SSL_CERT_DIR)" % pki["ca"] in line


def test_ssl_cert_dir(pki, tmp_path):
    stats, rcv, line = upload(pki, tmp_path, SSL_CERT_DIR=pki["dir"])
    assert_accepted(stats, rcv)
    assert "file -, directory %s (SSL_CERT_FILE/SSL_CERT_DIR)" % pki["dir"] in line


def test_unknown_ca_fails_verification(pki, tmp_path):
    stats, rcv, _ = upload(pki, tmp_path, SSL_CERT_FILE=pki["other"])
    assert_refused(stats, rcv)


def test_ca_file_setting_wins(pki, tmp_path):
    stats, rcv, line = upload(pki, tmp_path, DDLOCK_CA_FILE=pki["ca"], SSL_CERT_FILE=pki["other"],
                              SSL_CERT_DIR=pki["dir"])
    assert_accepted(stats, rcv)
    assert "file %s, directory - (the ca_file setting)" % pki["ca"] in line
    stats, rcv, _ = upload(pki, tmp_path, DDLOCK_CA_FILE=pki["other"], SSL_CERT_FILE=pki["ca"])
    assert_refused(stats, rcv)


def test_system_bundle_is_found_and_verifies(pki, tmp_path):
    # nothing configured: the distribution's bundle, which does not hold our
    # test CA, so verification is on and refuses the receiver
    stats, rcv, line = upload(pki, tmp_path)
    m = re.search(r"TLS CA certificates: file (\S+), directory (\S+) \((.*)\)", line)
    assert m, line
    found = m.group(1) if m.group(1) != "-" else m.group(2)
    assert m.group(3) == "the system's usual place" and os.path.exists(found), line
    assert_refused(stats, rcv)
