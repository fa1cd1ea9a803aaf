"""Compromise recovery with an UpstreamAuthority "disk", and revocation across restarts.

Upstream (one server and agent; SVID TTL 10 s, agent TTL 20 s, so revoke
becomes possible about 20 s after the taint):
 1. the workload holds an open FetchX509SVID stream; its SVID chains through
    local authority A to upstream root R1
 2. the operator installs a new upstream key and certificate (root R2) and a
    bundle file with R1 and R2, then `localauthority x509 prepare` (the new
    authority B is signed by R2 without a restart) and `activate`
 3. `upstreamauthority taint -subjectKeyID R1`: within seconds the stream
    delivers an SVID chaining to R2; revoke is refused while SVIDs under R1
    may be live, then succeeds; R1 leaves `bundle show` and the Workload API
    bundle, and does not come back after a server restart although the bundle
    file still holds it

Restart: an SVID with a long per-entry TTL signed before a restart still
holds back revoke of its authority after the restart.
"""

import datetime
import json
import os
import queue
import re
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import sigil

WID = sigil.TD_ID + "/upstream-taint/workload"
LONG_WID = sigil.TD_ID + "/upstream-taint/long"


def make_root(dirpath, name):
    """An upstream root CA: key and self-signed certificate files; returns (key, crt, skid hex)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Upstream"), x509.NameAttribute(NameOID.COMMON_NAME, "upstream root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    kp = os.path.join(dirpath, name + ".key")
    cp = os.path.join(dirpath, name + ".crt")
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(kp, 0o600)
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp, ski.digest.hex()


def install(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dst)


def write_bundle_file(path, *certs):
    text = b"".join(open(c, "rb").read() for c in certs)
    with open(path + ".tmp", "wb") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def skid(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def chain_info(resp, spiffe_id=WID):
    """(leaf, intermediates, roots) of spiffe_id's SVID in one X509SVIDResponse."""
    svid = [s for s in resp.svids if s.spiffe_id == spiffe_id][0]
    certs = [x509.load_der_x509_certificate(d) for d in sigil.split_der_certs(svid.x509_svid)]
    roots = [x509.load_der_x509_certificate(d) for d in sigil.split_der_certs(svid.bundle)]
    return certs[0], certs[1:], roots


def issued_by(cert, issuer):
    """cert names issuer and carries its signature (EC keys only, as used here)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except Exception:
        return False


def chain_root(leaf, inters, roots):
    """SKID of the root the chain verifies to (each link checked), or None."""
    cur = leaf
    for ca in inters:
        if not issued_by(cur, ca):
            return None
        cur = ca
    for r in roots:
        if issued_by(cur, r):
            return skid(r)
    return None


def bundle_skids(c):
    return [skid(x509.load_pem_x509_certificate(p.encode())) for p in sigil.pem_blocks(c.bundle_pem())]


class Stream:
    """An open FetchX509SVID stream, read on a thread."""

    def __init__(self, wl, sock):
        self.w = sigil.Workload(wl, sock)
        self.it = self.w.stream_x509(timeout=240)
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for resp in self.it:
                self.q.put(resp)
        except Exception as e:  # cancelled at the end
            self.q.put(e)

    def next(self, timeout):
        resp = self.q.get(timeout=timeout)
        assert not isinstance(resp, Exception), resp
        return resp

    def until(self, pred, timeout, what):
        """Reads messages until pred(resp); every message must verify against its own bundle."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no message where %s within %ds" % (what, timeout)
            try:
                resp = self.next(left)
            except queue.Empty:
                raise AssertionError("no message where %s within %ds" % (what, timeout))
            leaf, inters, roots = chain_info(resp)
            assert chain_root(leaf, inters, roots) is not None, "an SVID that does not verify against the bundle in its message"
            if pred(resp):
                return resp

    def close(self):
        self.it.cancel()
        self.w.close()


@pytest.fixture(scope="module")
def up(env):
    c = sigil.Cluster(env, "test_upstream_taint")
    updir = sigil.mkdir(os.path.join(c.dir, "upstream"), 0o700)
    k1, c1, r1 = make_root(updir, "root1")
    k2, c2, r2 = make_root(updir, "root2")
    key = os.path.join(updir, "upstream.key")
    crt = os.path.join(updir, "upstream.crt")
    bundle = os.path.join(updir, "bundle.pem")
    install(k1, key)
    install(c1, crt)
    write_bundle_file(bundle, c1)
    plugins = f"""    UpstreamAuthority "disk" {{
        plugin_data {{
            key_file_path = "{key}"
            cert_file_path = "{crt}"
            bundle_file_path = "{bundle}"
        }}
    }}
"""
    path = c.write_server_conf(extra_server='    agent_ttl = "20s"\n', extra_plugins=plugins)
    text = open(path).read().replace('default_x509_svid_ttl = "1h"', 'default_x509_svid_ttl = "10s"')
    with open(path, "w") as f:
        f.write(text)
    try:
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
        c.create_entry(WID, c.agents["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    except BaseException:
        c.shutdown()
        raise
    c.up = dict(k1=k1, c1=c1, r1=r1, k2=k2, c2=c2, r2=r2, key=key, crt=crt, bundle=bundle)
    yield c
    sigil.stop_cluster(c)


def test_upstream_rotate_taint_revoke(up, env):
    u = up.up
    sigil.wait_for_svid(env.wl, up.agents["agent"].sock, WID)
    s = Stream(env.wl, up.agents["agent"].sock)
    try:
        leaf, inters, roots = chain_info(s.next(20))
        assert chain_root(leaf, inters, roots) == u["r1"]
        a = skid(inters[0])
        assert bundle_skids(up) == [u["r1"]]

        # Refused: unknown root, the active local authority still chains to R1, and revoke before taint.
        p = up.server_cli("upstreamauthority taint", "-subjectKeyID", "abcdef")
        assert p.returncode == 1 and "not a root in the upstream bundle" in p.stderr, p.out
        p = up.server_cli("upstreamauthority taint", "-subjectKeyID", u["r1"])
        assert p.returncode == 1 and "active local authority" in p.stderr and a in p.stderr, p.out
        p = up.server_cli("upstreamauthority revoke", "-subjectKeyID", u["r1"])
        assert p.returncode == 1 and "not tainted" in p.stderr, p.out
        p = up.server_cli("upstreamauthority taint")
        assert p.returncode == 1 and "-subjectKeyID" in p.stderr, p.out

        # Rotate the upstream: new key and certificate, bundle file with both roots.
        install(u["k2"], u["key"])
        install(u["c2"], u["crt"])
        write_bundle_file(u["bundle"], u["c1"], u["c2"])
        p = up.server_cli("localauthority x509 prepare", "-output", "json")
        assert p.returncode == 0, p.out
        prepared = json.loads(p.stdout)["prepared_authority"]
        b = prepared["authority_id"]
        assert prepared["upstream_authority_subject_key_id"] == u["r2"]
        assert sorted(bundle_skids(up)) == sorted([u["r1"], u["r2"]])
        p = up.server_cli("localauthority x509 activate", "-authorityID", b)
        assert p.returncode == 0, p.out

        # Taint R1: the open stream gets an SVID chaining to R2 within seconds.
        t0 = time.monotonic()
        p = up.server_cli("upstreamauthority taint", "-subjectKeyID", u["r1"], "-output", "json")
        assert p.returncode == 0, p.out
        assert json.loads(p.stdout) == {"upstream_x509_authority_subject_key_id": u["r1"]}
        resp = s.until(lambda r: chain_root(*chain_info(r)) == u["r2"], 15, "the SVID chains to the new upstream root")
        assert time.monotonic() - t0 < 15
        leaf, inters, roots = chain_info(resp)
        assert skid(inters[0]) == b
        p = up.server_cli("localauthority x509 show", "-output", "json")
        old = [x for x in json.loads(p.stdout)["authorities"] if x["authority_id"] == a]
        assert old and old[0]["tainted"], p.out
        # The agent renews its own SVID too (it was signed by A).
        sigil.wait_until(
            lambda: "authority that signed the agent SVID was tainted" in up.agents["agent"].daemon.log(),
            15,
            what="the agent renewing its own SVID",
        )
        p = up.server_cli("upstreamauthority taint", "-subjectKeyID", u["r1"])
        assert p.returncode == 1 and "already tainted" in p.stderr, p.out

        # Revoke: refused while SVIDs under R1 may be live, then R1 leaves the bundle.
        p = up.server_cli("upstreamauthority revoke", "-subjectKeyID", u["r1"])
        assert p.returncode == 1 and "may still have live SVIDs" in p.stderr, p.out
        deadline = time.monotonic() + 60
        while True:
            p = up.server_cli("upstreamauthority revoke", "-subjectKeyID", u["r1"])
            if p.returncode == 0:
                break
            assert "may still have live SVIDs" in p.stderr, p.out
            assert time.monotonic() < deadline, p.out
            time.sleep(2)
        assert "Revoked upstream X.509 authority: " + u["r1"] in p.stdout, p.out
        assert bundle_skids(up) == [u["r2"]]
        s.until(lambda r: [skid(x) for x in chain_info(r)[2]] == [u["r2"]], 15, "the bundle holds only the new root")
        p = up.server_cli("localauthority x509 show", "-output", "json")
        assert a not in p.stdout, p.out
    finally:
        s.close()

    # A restart with R1 still in bundle_file_path does not bring it back.
    up.stop_server()
    up.start_server()
    assert bundle_skids(up) == [u["r2"]]
    p = up.server_cli("upstreamauthority revoke", "-subjectKeyID", u["r1"])
    assert p.returncode == 1 and "already revoked" in p.stderr, p.out

    def fresh():
        with sigil.Workload(env.wl, up.agents["agent"].sock) as w:
            code, _, resp = w.call("FetchX509SVID", timeout=3)
        if code != sigil.grpc.StatusCode.OK:
            return None
        leaf, inters, roots = chain_info(resp)
        return [skid(r) for r in roots] == [u["r2"]] and chain_root(leaf, inters, roots) == u["r2"]

    sigil.wait_until(fresh, 30, what="Workload API SVID and bundle under the new root only")


def test_revoke_after_restart_waits_for_long_entry_ttl(env):
    """An SVID with a 1 h entry TTL, signed before a restart, holds back revoke after it."""
    c = sigil.Cluster(env, "test_upstream_taint_restart")
    path = c.write_server_conf(extra_server='    agent_ttl = "20s"\n')
    text = open(path).read().replace('default_x509_svid_ttl = "1h"', 'default_x509_svid_ttl = "10s"')
    with open(path, "w") as f:
        f.write(text)
    try:
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
        c.create_entry(LONG_WID, c.agents["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()], "-x509SVIDTTL", "1h")
        svid = sigil.wait_for_svid(env.wl, c.agents["agent"].sock, LONG_WID)
        leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
        a = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()
        not_after = leaf.not_valid_after.replace(tzinfo=datetime.timezone.utc)
        assert not_after - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(minutes=50)

        c.stop_server()
        c.start_server()
        p = c.server_cli("localauthority x509 prepare", "-output", "json")
        assert p.returncode == 0, p.out
        b = json.loads(p.stdout)["prepared_authority"]["authority_id"]
        assert c.server_cli("localauthority x509 activate", "-authorityID", b).returncode == 0
        assert c.server_cli("localauthority x509 taint", "-authorityID", a).returncode == 0

        # Not just taint time + the configured 20 s: the 1 h SVID signed before the restart.
        p = c.server_cli("localauthority x509 revoke", "-authorityID", a)
        assert p.returncode == 1 and "may still have live SVIDs" in p.stderr, p.out
        m = re.search(r"until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", p.stderr)
        assert m, p.out
        until = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        assert until >= not_after, (until, not_after)
        time.sleep(22)
        p = c.server_cli("localauthority x509 revoke", "-authorityID", a)
        assert p.returncode == 1 and "may still have live SVIDs" in p.stderr, p.out
    finally:
        sigil.stop_cluster(c)
