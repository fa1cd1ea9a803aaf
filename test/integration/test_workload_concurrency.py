"""Workload API calls from many threads while the agent's state changes.

The agent answers calls on its rpc thread while its loop thread applies
Sync pushes and stores new SVIDs (one state lock between them). This drives
both at once: client threads keep calling FetchX509SVID, FetchX509Bundles,
FetchJWTSVID and FetchJWTBundles while entries for the same uid are created
and deleted, and an open FetchX509SVID stream must see every change. No call
may fail, every answer must be whole, and the agent must stay up.
"""

import os
import queue
import threading
import time

import grpc
import pytest

import sigil

BASE_ID = sigil.TD_ID + "/conc/base"
CHURN = 6
ROUNDS = 3
CLIENT_THREADS = 12
CHANGE_LIMIT_S = 30


def check_x509(resp):
    assert resp.svids, "FetchX509SVID answered without SVIDs"
    for s in resp.svids:
        assert s.spiffe_id.startswith(sigil.TD_ID + "/conc/"), s.spiffe_id
        assert s.x509_svid and s.x509_svid_key and s.bundle, "incomplete X509SVID for %s" % s.spiffe_id
        sigil.split_der_certs(s.x509_svid)
    return [s.spiffe_id for s in resp.svids]


def caller(pb, sock, stop, errors, counts, n):
    """One client thread: its own channel, the four fetches in turn."""
    w = sigil.Workload(pb, sock)
    i = 0
    try:
        while not stop.is_set():
            method = ("FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles")[i % 4]
            req = pb.JWTSVIDRequest(audience=["conc-%d" % (i % 3)]) if method == "FetchJWTSVID" else None
            code, details, resp = w.call(method, request=req, timeout=10)
            i += 1
            if code != grpc.StatusCode.OK:
                errors.append("%s: %s %s" % (method, code, details))
                continue
            try:
                if method == "FetchX509SVID":
                    check_x509(resp)
                elif method == "FetchX509Bundles":
                    assert sigil.TD_ID in resp.bundles and resp.bundles[sigil.TD_ID]
                elif method == "FetchJWTSVID":
                    assert resp.svids and all(s.svid.count(".") == 2 for s in resp.svids)
                else:
                    assert sigil.TD in resp.bundles or sigil.TD_ID in resp.bundles
            except AssertionError as e:
                errors.append("%s: %s" % (method, e))
        counts[n] = i
    finally:
        w.close()


@pytest.fixture(scope="module")
def base(cluster, agent, env):
    cluster.create_entry(BASE_ID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, BASE_ID, timeout=30)
    return BASE_ID


def test_calls_stay_whole_while_entries_change(cluster, agent, env, base):
    pb = env.wl
    stop = threading.Event()
    errors, counts = [], [0] * CLIENT_THREADS
    updates = queue.Queue()
    w = sigil.Workload(pb, agent.sock)
    stream = w.stream_x509(timeout=300)

    def watch():
        try:
            for m in stream:
                updates.put(sorted(s.spiffe_id for s in m.svids))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                updates.put(e)

    threading.Thread(target=watch, daemon=True).start()
    threads = [
        threading.Thread(target=caller, args=(pb, agent.sock, stop, errors, counts, n), daemon=True)
        for n in range(CLIENT_THREADS)
    ]
    for t in threads:
        t.start()

    def wait_ids(want):
        end = time.monotonic() + CHANGE_LIMIT_S
        last = None
        while time.monotonic() < end:
            try:
                got = updates.get(timeout=1)
            except queue.Empty:
                continue
            assert not isinstance(got, grpc.RpcError), "the open stream ended: %r" % got
            last = got
            if set(got) == want:
                return
        raise AssertionError("open stream never showed %s; last %s" % (sorted(want), last))

    try:
        want = {base}
        wait_ids(want)
        for r in range(ROUNDS):
            ids = []
            for i in range(CHURN):
                sid = sigil.TD_ID + "/conc/churn-%d-%d" % (r, i)
                ids.append(cluster.create_entry(sid, agent.spiffe_id, ["unix:uid:%d" % os.getuid()]))
                want.add(sid)
                wait_ids(want)
            for i, eid in enumerate(ids):
                p = cluster.server_cli("entry delete", "-entryID", eid)
                assert p.returncode == 0, p.out
                want.discard(sigil.TD_ID + "/conc/churn-%d-%d" % (r, i))
                wait_ids(want)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        stream.cancel()
        w.close()
    assert not errors, "%d failed calls, first: %s" % (len(errors), errors[:3])
    assert all(c > 0 for c in counts), counts
    assert agent.daemon.alive()
    with sigil.Workload(pb, agent.sock) as w2:
        assert check_x509(w2.x509()) == [base]
