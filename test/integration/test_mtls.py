"""mTLS between two registered workloads with openssl s_server / s_client.

Two entries with different selectors (unix:uid and unix:gid) both match
this process, so it receives both SVIDs from one FetchX509SVID.
"""

import os
import select
import subprocess
import time

import pytest
from cryptography import x509

import sigil

SERVER_WL = sigil.TD_ID + "/mtls/server"
CLIENT_WL = sigil.TD_ID + "/mtls/client"


@pytest.fixture(scope="module")
def svids(cluster, agent, env):
    cluster.create_entry(SERVER_WL, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    cluster.create_entry(CLIENT_WL, agent.spiffe_id, ["unix:gid:%d" % os.getgid()])
    sigil.wait_for_svid(env.wl, agent.sock, SERVER_WL)
    sigil.wait_for_svid(env.wl, agent.sock, CLIENT_WL)
    with sigil.Workload(env.wl, agent.sock) as w:
        resp = w.x509()
    by_id = {s.spiffe_id: s for s in resp.svids}
    assert SERVER_WL in by_id and CLIENT_WL in by_id, list(by_id)
    d = sigil.mkdir(os.path.join(cluster.dir, "mtls"))
    return {
        "server": sigil.write_svid(by_id[SERVER_WL], d, "server"),
        "client": sigil.write_svid(by_id[CLIENT_WL], d, "client"),
        "dir": d,
    }


def _s_server(cert, key, chain, cafile):
    port = sigil.free_port()
    cmd = ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-naccept", "1",
           "-cert", cert, "-key", key, "-CAfile", cafile, "-Verify", "1", "-verify_return_error"]
    if chain and os.path.getsize(chain) > 0:
        cmd += ["-cert_chain", chain]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    buf = b""
    deadline = time.monotonic() + 10
    while b"ACCEPT" not in buf:
        r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            p.kill()
            raise AssertionError("s_server did not start: %r" % buf)
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError("s_server exited: %r" % buf)
        buf += chunk
    return p, port, buf


def _finish(p, head):
    try:
        out, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return (head + out).decode(errors="replace")


def _s_client(port, cert, key, chain, cafile):
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", cafile,
           "-verify_return_error", "-showcerts"]
    if cert:
        cmd += ["-cert", cert, "-key", key]
    if chain and os.path.getsize(chain) > 0:
        cmd += ["-cert_chain", chain]
    return sigil.run(cmd, input_=b"", timeout=20)


def test_mtls_handshake_between_two_svids(svids):
    s, c = svids["server"], svids["client"]
    p, port, head = _s_server(s["leaf"], s["key"], s["chain"], s["bundle"])
    cl = _s_client(port, c["leaf"], c["key"], c["chain"], c["bundle"])
    srv_out = _finish(p, head)
    assert cl.returncode == 0, cl.out
    assert "Verify return code: 0 (ok)" in cl.stdout, cl.out
    # The client saw the server's SVID ...
    server_leaf = x509.load_pem_x509_certificate(sigil.pem_blocks(cl.stdout)[0].encode())
    assert sigil.uri_sans(server_leaf) == [SERVER_WL]
    # ... and the server saw the client's.
    assert "Client certificate" in srv_out, srv_out
    client_leaf = x509.load_pem_x509_certificate(
        sigil.pem_blocks(srv_out.split("Client certificate", 1)[1])[0].encode())
    assert sigil.uri_sans(client_leaf) == [CLIENT_WL]


def test_mtls_rejects_client_cert_from_foreign_ca(svids):
    s = svids["server"]
    _, fcert, fkey = sigil.make_foreign_ca(svids["dir"])
    p, port, head = _s_server(s["leaf"], s["key"], s["chain"], s["bundle"])
    _s_client(port, fcert, fkey, None, s["bundle"])
    srv_out = _finish(p, head)
    assert "Client certificate" not in srv_out, srv_out
    # TLS 1.3: the client finishes its side before the server's alert, so
    # the refusal is asserted where it happens.
    assert "verify error" in srv_out, srv_out
    assert "certificate verify failed" in srv_out, srv_out


def test_mtls_client_rejects_server_from_other_trust_root(svids):
    s, c = svids["server"], svids["client"]
    fca, _, _ = sigil.make_foreign_ca(svids["dir"])
    p, port, head = _s_server(s["leaf"], s["key"], s["chain"], s["bundle"])
    cl = _s_client(port, c["leaf"], c["key"], c["chain"], fca)
    _finish(p, head)
    assert cl.returncode != 0, cl.out
    assert "Verify return code: 0 (ok)" not in cl.stdout
