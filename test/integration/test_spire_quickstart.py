"""SPIRE's quickstart configs start sigil unchanged (conf/ copied, run from its parent).

conf/ comes from test/fixtures/spire-quickstart (the shape of SPIRE's quickstart
files), or from a real SPIRE copy when SIGIL_SPIRE_QUICKSTART names one. The
dummy upstream CA and the agent's root bundle are generated at test time unless
that copy already holds them.

Server: UpstreamAuthority "disk" with the dummy upstream CA, KeyManager
"memory", port 8081, admin socket /tmp/spire-server/private/api.sock.
Agent: trust bundle = the dummy root CA, socket /tmp/spire-agent/public/api.sock.
The CLIs run without -socketPath, on their default paths.
"""

import datetime
import os
import shutil
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import sigil

QS = os.environ.get("SIGIL_SPIRE_QUICKSTART") or \
    os.path.join(sigil.REPO, "test", "fixtures", "spire-quickstart", "conf")
SERVER_SOCK = "/tmp/spire-server/private/api.sock"
AGENT_SOCK = "/tmp/spire-agent/public/api.sock"
WID = sigil.TD_ID + "/quickstart/workload"


def _make_dummy_ca(conf):
    """Writes a self-signed P-384 upstream CA (SEC1 key, like SPIRE's dummy one)
    and the agent's root bundle, unless conf/ already holds them."""
    key_path = os.path.join(conf, "server", "dummy_upstream_ca.key")
    crt_path = os.path.join(conf, "server", "dummy_upstream_ca.crt")
    root_path = os.path.join(conf, "agent", "dummy_root_ca.crt")
    if not (os.path.exists(key_path) and os.path.exists(crt_path)):
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://local")]),
                           critical=False)
            .sign(key, hashes.SHA512())
        )
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
        os.chmod(key_path, 0o600)
        with open(crt_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    if not os.path.exists(root_path):
        shutil.copyfile(crt_path, root_path)


def _unix_in_use(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(scope="module")
def qs(env):
    if not os.path.isdir(QS):
        pytest.skip("SPIRE quickstart configs not found at %s" % QS)
    for p in (SERVER_SOCK, AGENT_SOCK):
        if _unix_in_use(p):
            pytest.skip("%s is in use by another process" % p)
    if sigil.port_in_use(8081):
        pytest.skip("port 8081 (quickstart server_port) is in use")
    created = [d for d in ("/tmp/spire-server", "/tmp/spire-agent") if not os.path.exists(d)]
    c = sigil.Cluster(env, "quickstart")
    shutil.copytree(QS, os.path.join(c.dir, "conf"))
    _make_dummy_ca(os.path.join(c.dir, "conf"))
    c.port = 8081
    c.admin_sock = SERVER_SOCK
    c.server_conf = "conf/server/server.conf"
    try:
        c.server = sigil.Daemon("sigil-server", [sigil.SERVER_BIN, "run", "-config", "conf/server/server.conf"],
                                os.path.join(c.dir, "server.log"), cwd=c.dir)
        def healthy():
            if not c.server.alive():
                _raise(c.server)
            return sigil.run([sigil.SERVER_BIN, "healthcheck"]).returncode == 0

        sigil.wait_until(healthy, 20, what="quickstart server healthcheck")
        r = sigil.run([sigil.SERVER_BIN, "token", "generate"])
        assert r.returncode == 0, r.out
        token = r.stdout.split("Token:", 1)[1].split()[0]
        a = sigil.Agent(c, "agent", "conf/agent/agent.conf", AGENT_SOCK, os.path.join(c.dir, ".data"), c.dir)
        c.agents["agent"] = a
        a.token = token
        a.daemon = sigil.Daemon("sigil-agent", [sigil.AGENT_BIN, "run", "-config", "conf/agent/agent.conf",
                                                "-joinToken", token], os.path.join(c.dir, "agent.log"), cwd=c.dir)
        a.wait_socket()
    except BaseException:
        c.shutdown()
        raise
    yield c
    try:
        sigil.stop_cluster(c)
    finally:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)


def _raise(d):
    raise AssertionError("daemon exited %s:\n%s" % (d.proc.returncode, d.log()[-4000:]))


def test_quickstart_register_and_fetch(qs, env):
    a = qs.agents["agent"]
    r = sigil.run([sigil.SERVER_BIN, "entry", "create", "-parentID", a.spiffe_id, "-spiffeID", WID,
                   "-selector", "unix:uid:%d" % os.getuid()])
    assert r.returncode == 0, r.out
    sigil.wait_for_svid(env.wl, AGENT_SOCK, WID)
    out = os.path.join(qs.dir, "fetched")
    r = sigil.run([sigil.AGENT_BIN, "api", "fetch", "x509", "-write", out])
    assert r.returncode == 0, r.out
    assert WID in r.stdout
    certs = sigil.pem_blocks(open(os.path.join(out, "svid.0.pem")).read())
    leaf, rest = os.path.join(out, "leaf.pem"), os.path.join(out, "rest.pem")
    with open(leaf, "w") as f:
        f.write(certs[0] + "\n")
    with open(rest, "w") as f:
        f.write("\n".join(certs[1:]) + "\n")
    root = os.path.join(qs.dir, "conf", "agent", "dummy_root_ca.crt")
    # The server's CA is an intermediate under the upstream root.
    assert len(certs) >= 2, "expected leaf + intermediate in svid.0.pem"
    v = sigil.openssl_verify(root, leaf, rest)
    assert v.returncode == 0, v.out
    bundle = sigil.pem_blocks(open(os.path.join(out, "bundle.0.pem")).read())
    assert [x509.load_pem_x509_certificate(b.encode()) for b in bundle] == \
        [x509.load_pem_x509_certificate(open(root, "rb").read())]


def test_quickstart_bundle_show_is_upstream_root(qs):
    r = sigil.run([sigil.SERVER_BIN, "bundle", "show"])
    assert r.returncode == 0, r.out
    root = x509.load_pem_x509_certificate(open(os.path.join(qs.dir, "conf", "agent", "dummy_root_ca.crt"), "rb").read())
    assert [x509.load_pem_x509_certificate(b.encode()) for b in sigil.pem_blocks(r.stdout)] == [root]
