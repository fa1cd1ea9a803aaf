"""Compromise recovery: tainting an authority makes agents re-mint at once.

Steps (one server and agent, default TTLs, so nothing rotates on its own):
 1. a workload holds an open FetchX509SVID stream with an SVID from authority A
 2. `localauthority x509 prepare`, then `activate` the new authority B
 3. `taint -authorityID A`: within seconds the open stream delivers an SVID
    issued by B, and every message's SVID verifies against the bundle it came
    with; revoke is refused while A's SVIDs may still be live
"""

import json
import os
import queue
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import sigil

WID = sigil.TD_ID + "/taint/workload"


@pytest.fixture(scope="module")
def c(env):
    c = sigil.Cluster(env, "test_taint")
    try:
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
        c.create_entry(WID, c.agents["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


def authority_of(cert):
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()


def leaf_and_bundle(resp):
    svid = [s for s in resp.svids if s.spiffe_id == WID][0]
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    roots = [x509.load_der_x509_certificate(d) for d in sigil.split_der_certs(svid.bundle)]
    return leaf, roots


def verifies(leaf, roots):
    """The leaf is signed by one of roots (self-signed CA mode: no intermediates)."""
    for r in roots:
        try:
            r.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
            return True
        except Exception:
            continue
    return False


def authority_cli(c, verb, *args):
    return c.server_cli("localauthority x509 " + verb, *args)


def test_taint_makes_agents_reissue_at_once(c, env):
    sigil.wait_for_svid(env.wl, c.agents["agent"].sock, WID)
    w = sigil.Workload(env.wl, c.agents["agent"].sock)
    it = w.stream_x509(timeout=120)
    msgs = queue.Queue()

    def reader():
        try:
            for resp in it:
                msgs.put(resp)
        except Exception as e:  # the stream is cancelled at the end
            msgs.put(e)

    threading.Thread(target=reader, daemon=True).start()
    try:
        first = msgs.get(timeout=20)
        leaf, roots = leaf_and_bundle(first)
        a = authority_of(leaf)
        assert verifies(leaf, roots)

        p = authority_cli(c, "prepare", "-output", "json")
        assert p.returncode == 0, p.out
        b = json.loads(p.stdout)["prepared_authority"]["authority_id"]
        p = authority_cli(c, "activate", "-authorityID", b)
        assert p.returncode == 0, p.out
        p = authority_cli(c, "taint", "-authorityID", a)
        assert p.returncode == 0, p.out

        # Every message until the re-issued SVID: it must verify against its own bundle.
        deadline = 15
        while True:
            resp = msgs.get(timeout=deadline)
            assert not isinstance(resp, Exception), resp
            leaf, roots = leaf_and_bundle(resp)
            assert verifies(leaf, roots), "an SVID that does not verify against the bundle in its message"
            if authority_of(leaf) == b:
                break
        assert authority_of(leaf) == b

        # The tainted SVIDs may still be live (1 h TTL): revoke must wait.
        p = authority_cli(c, "revoke", "-authorityID", a)
        assert p.returncode == 1 and "may still have live SVIDs" in p.stderr, p.out
    finally:
        it.cancel()
        w.close()
