"""Federation between two trust domains on loopback.

Server A (example.org) federates with B (other.test) through its config;
B federates with A through `sigil-server federation create`. Both serve a
bundle endpoint with the https_spiffe profile. The tests fetch the
endpoints independently (Python ssl), check that each server stores the
other's bundle, that entries with -federatesWith deliver it to workloads,
and that a workload of each domain completes an mTLS handshake with
openssl, verifying the peer with its own plus the federated bundle. Then
the relationship and bundle are removed and the handshake must fail.
Malformed bundle endpoints leave the last good bundle in place.
"""

import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

import sigil
from cryptography import x509
from cryptography.hazmat.primitives import serialization

TD_B = "other.test"
TD_B_ID = "spiffe://" + TD_B
UID = os.getuid()


class OtherCluster(sigil.Cluster):
    """A cluster whose server and agents use trust domain other.test."""

    def write_server_conf(self, extra_server="", extra_plugins=""):
        path = super().write_server_conf(extra_server, extra_plugins)
        self._retd(path)
        return path

    def write_agent_conf(self, name, trust_bundle_path=None):
        a = super().write_agent_conf(name, trust_bundle_path)
        self._retd(a.conf)
        return a

    @staticmethod
    def _retd(path):
        with open(path) as f:
            text = f.read()
        text = text.replace('trust_domain = "%s"' % sigil.TD, 'trust_domain = "%s"' % TD_B)
        with open(path, "w") as f:
            f.write(text)


def agent_id(td, agent):
    return "spiffe://%s/spire/agent/join_token/%s" % (td, agent.token)


def server_log(c):
    with open(os.path.join(c.dir, "server.log"), "rb") as f:
        return f.read().decode(errors="replace")


@pytest.fixture(scope="module")
def fed(env):
    pa, pb = sigil.free_port(), sigil.free_port()
    a = sigil.Cluster(env, "fed_a")
    b = OtherCluster(env, "fed_b")
    a.ep_port, b.ep_port = pa, pb
    a.write_server_conf(
        extra_server=f"""    federation {{
        bundle_endpoint {{
            address = "127.0.0.1"
            port = {pa}
            refresh_hint = "2s"
        }}
        federates_with "{TD_B}" {{
            bundle_endpoint_url = "https://127.0.0.1:{pb}"
            bundle_endpoint_profile "https_spiffe" {{
                endpoint_spiffe_id = "{TD_B_ID}/spire/server"
            }}
        }}
    }}
"""
    )
    b.write_server_conf(
        extra_server=f"""    federation {{
        bundle_endpoint {{
            address = "127.0.0.1"
            port = {pb}
            refresh_hint = "2s"
            profile "https_spiffe" {{}}
        }}
    }}
"""
    )
    try:
        for c in (a, b):
            c.start_server()
            c.write_bundle()
            c.start_agent("agent")
        # A's relationship comes from its config; it needs B's bundle once to
        # trust B's endpoint (https_spiffe bootstrap), as SPIRE does.
        p = a.server_cli("bundle set", "-id", TD_B_ID, "-path", b.bundle_path)
        assert p.returncode == 0, p.out
        # B's relationship comes from the CLI, with A's bundle as bootstrap.
        p = b.server_cli(
            "federation create",
            "-trustDomain", sigil.TD,
            "-bundleEndpointURL", "https://127.0.0.1:%d" % pa,
            "-bundleEndpointProfile", "https_spiffe",
            "-endpointSpiffeID", sigil.SERVER_ID,
            "-trustDomainBundlePath", a.bundle_path,
            "-trustDomainBundleFormat", "pem",
        )
        assert p.returncode == 0, p.out
    except BaseException:
        a.shutdown()
        b.shutdown()
        raise
    yield a, b
    fa = a.shutdown()
    fb = b.shutdown()
    assert not (fa + fb), "; ".join(fa + fb)


# --------------------------------------------------------------------------
# helpers


def https_get(port, cafile, request=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10):
    """(status, headers text, body bytes, peer cert) from the endpoint, verified with cafile."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw) as s:
            peer = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
            s.sendall(request)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, head.decode(errors="replace"), body, peer


def bundle_json(c, td_id):
    p = c.server_cli("bundle list", "-id", td_id, "-format", "spiffe")
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)


def x5c_ders(doc):
    import base64

    return [base64.b64decode(k["x5c"][0]) for k in doc["keys"] if k.get("use") == "x509-svid"]


def wait_fetched(c, td_id, timeout=30):
    """Waits until c stores td's bundle as fetched from its endpoint (it carries the hint)."""

    def ok():
        d = bundle_json(c, td_id)
        return d if d and d.get("spiffe_refresh_hint") == 2 else None

    return sigil.wait_until(ok, timeout, interval=0.5, what="bundle of %s fetched by %s" % (td_id, c.dir))


def fetch_write(agent, dirpath):
    os.makedirs(dirpath, exist_ok=True)
    for f in os.listdir(dirpath):
        os.unlink(os.path.join(dirpath, f))
    p = agent.cli("api fetch x509", "-write", dirpath)
    assert p.returncode == 0, p.out
    return sorted(os.listdir(dirpath))


def cafile(dirpath, out):
    """Own bundle plus every federated bundle the agent wrote, as one CA file."""
    parts = []
    for f in sorted(os.listdir(dirpath)):
        if f.startswith("bundle.") or f.startswith("federated_bundle."):
            with open(os.path.join(dirpath, f)) as fh:
                parts.append(fh.read())
    with open(out, "w") as fh:
        fh.write("".join(parts))
    return out


def handshake(sdir, cdir, base, timeout=20):
    """openssl s_server (SVID in sdir) and s_client (SVID in cdir), both verifying the peer."""
    port = sigil.free_port()
    scas = cafile(sdir, os.path.join(base, "server-ca.pem"))
    ccas = cafile(cdir, os.path.join(base, "client-ca.pem"))
    srv = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", os.path.join(sdir, "svid.0.pem"),
         "-key", os.path.join(sdir, "svid.0.key"), "-CAfile", scas, "-Verify", "1",
         "-verify_return_error", "-naccept", "1", "-www"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        sigil.wait_until(lambda: sigil.port_in_use(port), 10, what="openssl s_server")
        cli = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-cert", os.path.join(cdir, "svid.0.pem"),
             "-key", os.path.join(cdir, "svid.0.key"), "-CAfile", ccas, "-verify_return_error", "-brief"],
            input=b"GET / HTTP/1.0\r\n\r\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        )
    finally:
        srv.kill()
        sout = srv.communicate()[0].decode(errors="replace")
    out = cli.stdout.decode(errors="replace")
    return cli.returncode == 0 and "Verification: OK" in out, out + "\n--- server ---\n" + sout


def federated_keys(agent, wl):
    with sigil.Workload(wl, agent.sock) as w:
        code, details, resp = w.call("FetchX509SVID", timeout=5)
    if resp is None:
        return None
    return dict(resp.federated_bundles)


# --------------------------------------------------------------------------
# tests


def test_bundle_endpoint_serves_spiffe_bundle(fed):
    a, b = fed
    status, head, body, peer = https_get(b.ep_port, b.bundle_path)
    assert status == 200, head
    assert "application/json" in head.lower()
    # https_spiffe: the endpoint presents B's server SVID.
    assert sigil.uri_sans(peer) == [TD_B_ID + "/spire/server"]
    doc = json.loads(body)
    assert doc["spiffe_refresh_hint"] == 2
    assert doc["spiffe_sequence"] >= 1
    with open(b.bundle_path) as f:
        want = sigil.pem_ders(f.read())
    assert sorted(x5c_ders(doc)) == sorted(want)
    for k in doc["keys"]:
        assert k["use"] in ("x509-svid", "jwt-svid")
        if k["use"] == "jwt-svid":
            assert k.get("kid")


def test_bundle_endpoint_refuses_bad_requests(fed):
    a, b = fed
    assert https_get(b.ep_port, b.bundle_path, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 404
    assert https_get(b.ep_port, b.bundle_path, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[0] == 405
    assert https_get(b.ep_port, b.bundle_path, b"\x00\x01garbage\r\n\r\n")[0] == 400
    big = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    assert https_get(b.ep_port, b.bundle_path, big)[0] in (400, 431)
    # A client that connects and says nothing does not hold up others.
    idle = [socket.create_connection(("127.0.0.1", b.ep_port)) for _ in range(5)]
    try:
        t0 = time.monotonic()
        assert https_get(b.ep_port, b.bundle_path)[0] == 200
        assert time.monotonic() - t0 < 5
    finally:
        for s in idle:
            s.close()
    # Plain HTTP on the TLS port is not answered with the bundle.
    with socket.create_connection(("127.0.0.1", b.ep_port), timeout=15) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(15)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert b"x509-svid" not in data


def test_relationships_from_config_and_cli(fed):
    a, b = fed
    p = a.server_cli("federation list")
    assert p.returncode == 0, p.out
    assert "Found 1 federation relationship" in p.stdout, p.out
    assert TD_B in p.stdout and "https_spiffe" in p.stdout
    assert "%s/spire/server" % TD_B_ID in p.stdout
    p = b.server_cli("federation show", "-trustDomain", sigil.TD, "-output", "json")
    assert p.returncode == 0, p.out
    doc = json.loads(p.stdout)
    assert doc["trust_domain"] == sigil.TD
    assert doc["bundle_endpoint_url"] == "https://127.0.0.1:%d" % a.ep_port
    assert doc["https_spiffe"]["endpoint_spiffe_id"] == sigil.SERVER_ID
    # Bad input is refused with the value named.
    p = b.server_cli("federation create", "-trustDomain", "Not A Domain", "-bundleEndpointURL",
                     "https://x", "-bundleEndpointProfile", "https_web")
    assert p.returncode != 0 and "Not A Domain" in p.out, p.out
    p = b.server_cli("federation create", "-trustDomain", "x.test", "-bundleEndpointURL", "http://x",
                     "-bundleEndpointProfile", "https_web")
    assert p.returncode != 0 and "https" in p.out, p.out
    p = b.server_cli("federation create", "-trustDomain", TD_B, "-bundleEndpointURL", "https://x",
                     "-bundleEndpointProfile", "https_web")
    assert p.returncode != 0 and "own trust domain" in p.out, p.out
    p = b.server_cli("federation create", "-trustDomain", "x.test", "-bundleEndpointURL", "https://x",
                     "-bundleEndpointProfile", "https_spiffe")
    assert p.returncode != 0 and "endpointSpiffeID" in p.out, p.out


def test_foreign_bundles_fetched_and_listed(fed):
    a, b = fed
    got_b = wait_fetched(a, TD_B_ID)
    with open(b.bundle_path) as f:
        assert sorted(x5c_ders(got_b)) == sorted(sigil.pem_ders(f.read()))
    got_a = wait_fetched(b, sigil.TD_ID)
    with open(a.bundle_path) as f:
        assert sorted(x5c_ders(got_a)) == sorted(sigil.pem_ders(f.read()))
    p = a.server_cli("bundle list")
    assert p.returncode == 0, p.out
    assert TD_B_ID in p.stdout and "BEGIN CERTIFICATE" in p.stdout
    # The sequence never goes backwards: an explicit refresh keeps it.
    p = a.server_cli("federation refresh", "-id", TD_B_ID)
    assert p.returncode == 0, p.out
    assert bundle_json(a, TD_B_ID)["spiffe_sequence"] >= got_b["spiffe_sequence"]


def test_entry_federates_with_checks(fed):
    a, b = fed
    aid = agent_id(sigil.TD, a.agents["agent"])
    p = a.server_cli("entry create", "-spiffeID", sigil.TD_ID + "/nofed", "-parentID", aid,
                     "-selector", "unix:uid:%d" % UID, "-federatesWith", "spiffe://nobody.test")
    assert p.returncode != 0 and "nobody.test" in p.out, p.out
    p = a.server_cli("entry create", "-spiffeID", sigil.TD_ID + "/nofed", "-parentID", aid,
                     "-selector", "unix:uid:%d" % UID, "-federatesWith", sigil.TD_ID)
    assert p.returncode != 0 and "own trust domain" in p.out, p.out
    p = a.server_cli("entry create", "-spiffeID", sigil.TD_ID + "/nofed", "-parentID", aid,
                     "-selector", "unix:uid:%d" % UID, "-federatesWith", "spiffe://bad domain")
    assert p.returncode != 0 and "bad domain" in p.out, p.out


def test_federated_bundles_reach_workloads_and_mtls(fed, wl, env):
    a, b = fed
    wait_fetched(a, TD_B_ID)
    wait_fetched(b, sigil.TD_ID)
    aa, ba = a.agents["agent"], b.agents["agent"]
    a.create_entry(sigil.TD_ID + "/client", agent_id(sigil.TD, aa), ["unix:uid:%d" % UID],
                   "-federatesWith", TD_B_ID)
    b.create_entry(TD_B_ID + "/server", agent_id(TD_B, ba), ["unix:uid:%d" % UID],
                   "-federatesWith", sigil.TD_ID)
    p = a.server_cli("entry show", "-spiffeID", sigil.TD_ID + "/client")
    assert p.returncode == 0 and TD_B_ID in p.stdout, p.out
    sigil.wait_for_svid(wl, aa.sock, sigil.TD_ID + "/client", timeout=30)
    sigil.wait_for_svid(wl, ba.sock, TD_B_ID + "/server", timeout=30)

    # X509SVIDResponse.federated_bundles carries the other domain's CAs.
    fa = sigil.wait_until(lambda: (federated_keys(aa, wl) or {}).get(TD_B_ID), 30, 0.5, "federated bundle in A")
    with open(b.bundle_path) as f:
        assert sorted(sigil.split_der_certs(fa)) == sorted(sigil.pem_ders(f.read()))
    fb = sigil.wait_until(lambda: (federated_keys(ba, wl) or {}).get(sigil.TD_ID), 30, 0.5, "federated bundle in B")
    with open(a.bundle_path) as f:
        assert sorted(sigil.split_der_certs(fb)) == sorted(sigil.pem_ders(f.read()))

    base = sigil.mkdir(os.path.join(env.base, "fed_mtls"))
    cdir, sdir = os.path.join(base, "client"), os.path.join(base, "server")
    files = fetch_write(aa, cdir)
    assert any(f.startswith("federated_bundle.") for f in files), files
    fetch_write(ba, sdir)
    ok, out = handshake(sdir, cdir, base)
    assert ok, out

    # Removing the relationship and the bundle in A ends its trust in B.
    p = a.server_cli("federation delete", "-id", TD_B_ID)
    assert p.returncode == 0, p.out
    p = a.server_cli("bundle delete", "-id", TD_B_ID)
    assert p.returncode != 0 and "dissociate" in p.out, p.out  # restrict: entries use it
    p = a.server_cli("bundle delete", "-id", TD_B_ID, "-mode", "dissociate")
    assert p.returncode == 0, p.out
    def gone():
        keys = federated_keys(aa, wl)
        return keys is not None and TD_B_ID not in keys

    sigil.wait_until(gone, 30, 0.5, "federated bundle gone from A's workload")
    time.sleep(3)  # one refresh interval: nothing brings it back
    assert bundle_json(a, TD_B_ID) is None
    fetch_write(aa, cdir)
    ok, out = handshake(sdir, cdir, base)
    assert not ok, out


def test_junk_endpoint_keeps_last_good_bundle(fed, env):
    a, b = fed
    d = sigil.mkdir(os.path.join(env.base, "fed_junk"))
    ca, leaf, key = sigil.make_foreign_ca(d, uri="spiffe://junk.test/endpoint")
    p = a.server_cli("bundle set", "-id", "spiffe://junk.test", "-path", ca)
    assert p.returncode == 0, p.out
    before = bundle_json(a, "spiffe://junk.test")

    bodies = [b"not json at all", b'{"keys": "nope"}', b'{"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}']
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf, key)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    port = lsock.getsockname()[1]
    served = []
    stop = threading.Event()

    def serve():
        lsock.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.settimeout(5)
                    s.recv(4096)
                    body = bodies[len(served) % len(bodies)]
                    served.append(body)
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(body), body))
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = a.server_cli("federation create", "-trustDomain", "junk.test", "-bundleEndpointURL",
                         "https://127.0.0.1:%d" % port, "-bundleEndpointProfile", "https_spiffe",
                         "-endpointSpiffeID", "spiffe://junk.test/endpoint")
        assert p.returncode == 0, p.out
        sigil.wait_until(lambda: len(served) >= 3, 30, 0.5, "three fetches of the junk endpoint")
        p = a.server_cli("federation refresh", "-id", "spiffe://junk.test")
        assert p.returncode != 0 and "malformed bundle" in p.out, p.out
        log = server_log(a)
        assert "federated bundle refresh failed trust_domain=junk.test" in log
        assert "sent a malformed bundle" in log
        assert bundle_json(a, "spiffe://junk.test") == before
    finally:
        stop.set()
        t.join(5)
        lsock.close()
        a.server_cli("federation delete", "-id", "spiffe://junk.test")


def test_cli_data_and_spiffe_format(fed, env):
    a, b = fed
    d = sigil.mkdir(os.path.join(env.base, "fed_data"))
    data = os.path.join(d, "rels.json")
    with open(data, "w") as f:
        json.dump({"federationRelationships": [
            {"trustDomain": "web.test", "bundleEndpointUrl": "https://127.0.0.1:1/bundle", "httpsWeb": {}},
            {"trustDomain": "spf.test", "bundleEndpointUrl": "https://127.0.0.1:1",
             "httpsSpiffe": {"endpointSpiffeId": "spiffe://spf.test/spire/server"}},
        ]}, f)
    p = b.server_cli("federation create", "-data", data)
    assert p.returncode == 0, p.out
    p = b.server_cli("federation list", "-output", "json")
    got = {r["trust_domain"]: r for r in json.loads(p.stdout)["federation_relationships"]}
    assert "https_web" in got["web.test"] and got["spf.test"]["https_spiffe"]["endpoint_spiffe_id"] == "spiffe://spf.test/spire/server"
    p = b.server_cli("federation create", "-data", data, "-trustDomain", "x.test")
    assert p.returncode != 0 and "-data" in p.out, p.out
    for td in ("web.test", "spf.test"):
        assert b.server_cli("federation delete", "-id", "spiffe://" + td).returncode == 0

    # bundle set from stdin in SPIFFE format, then an entry from -data federating with it.
    doc = bundle_json(a, "spiffe://junk.test")
    p = sigil.run([sigil.SERVER_BIN, "bundle", "set", "-socketPath", b.admin_sock, "-id", "spiffe://stdin.test",
                   "-format", "spiffe"], input_=json.dumps(doc).encode())
    assert p.returncode == 0, p.out
    assert sorted(x5c_ders(bundle_json(b, "spiffe://stdin.test"))) == sorted(x5c_ders(doc))
    entries = os.path.join(d, "entries.json")
    with open(entries, "w") as f:
        json.dump({"entries": [{"spiffe_id": TD_B_ID + "/data", "parent_id": TD_B_ID + "/spire/server",
                                "selectors": [{"type": "unix", "value": "uid:4242"}],
                                "federates_with": ["spiffe://stdin.test"]}]}, f)
    p = b.server_cli("entry create", "-data", entries)
    assert p.returncode == 0, p.out
    p = b.server_cli("entry show", "-spiffeID", TD_B_ID + "/data", "-output", "json")
    assert "spiffe://stdin.test" in p.stdout, p.out
    # delete mode: the entry goes with the bundle, as SPIRE's DELETE mode.
    p = b.server_cli("bundle delete", "-id", "spiffe://stdin.test", "-mode", "delete")
    assert p.returncode == 0, p.out
    p = b.server_cli("entry show", "-spiffeID", TD_B_ID + "/data")
    assert TD_B_ID + "/data" not in p.stdout, p.out


def test_restart_keeps_federation_state(fed):
    a, b = fed
    before = bundle_json(b, sigil.TD_ID)
    b.stop_server()
    b.start_server()
    assert bundle_json(b, sigil.TD_ID)["spiffe_sequence"] >= before["spiffe_sequence"]
    p = b.server_cli("federation show", "-trustDomain", sigil.TD)
    assert p.returncode == 0 and "https_spiffe" in p.stdout, p.out
    # And the endpoint is back.
    sigil.wait_until(lambda: https_get(b.ep_port, b.bundle_path)[0] == 200, 20, 0.5, "bundle endpoint after restart")
