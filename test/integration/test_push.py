"""Sync is a push stream: an agent's open Sync gets a new full state as soon
as something it can see changes, and ends when the agent is evicted or
banned.

A grpcio client holds Sync open with a real agent's SVID (through
sigil.NodeTLSBridge, as in test_node_api.py) while the admin CLI creates
and deletes entries and evicts or bans agents.
"""

import os
import queue
import threading
import time

import grpc
import pytest

import sigil

NODE = "/sigil.node.v1.Node/"
PUSH_LIMIT_S = 1.0


class SyncStream:
    """One open Sync call read by a background thread into a queue."""

    def __init__(self, bridge, pb, timeout=120):
        self.ch = bridge.channel()
        self.call = self.ch.unary_stream(NODE + "Sync", request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=pb.SyncResponse.FromString)(pb.SyncRequest(), timeout=timeout)
        self.q = queue.Queue()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            for m in self.call:
                self.q.put((time.monotonic(), m))
            self.q.put((time.monotonic(), None))
        except grpc.RpcError as e:
            self.q.put((time.monotonic(), e))

    def next(self, timeout):
        """(arrival time, SyncResponse | None at a clean end | grpc.RpcError)."""
        return self.q.get(timeout=timeout)

    def wait_for(self, pred, timeout):
        """The first message for which pred is true; fails on an early end."""
        end = time.monotonic() + timeout
        seen = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching Sync message within %.1fs; saw %d others" % (timeout, len(seen)))
            try:
                t, m = self.next(left)
            except queue.Empty:
                continue
            if m is None or isinstance(m, grpc.RpcError):
                raise AssertionError("Sync ended while waiting: %r" % (m,))
            if pred(m):
                return t, m, seen
            seen.append(m)

    def wait_end(self, timeout):
        """The RpcError (or None) that ends the stream, skipping messages."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0, "Sync stream still open after %.1fs" % timeout
            try:
                t, m = self.next(left)
            except queue.Empty:
                continue
            if m is None or isinstance(m, grpc.RpcError):
                return t, m

    def close(self):
        self.call.cancel()
        self.t.join(5)
        self.ch.close()


def _ids(m):
    return {e.spiffe_id for e in m.entries}


@pytest.fixture(scope="module")
def pushee(cluster, env):
    """A second agent with one entry, and its credentials for the bridge."""
    a = cluster.start_agent("pushee")
    first = sigil.TD_ID + "/push/first"
    cluster.create_entry(first, a.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, a.sock, first)
    d = sigil.mkdir(os.path.join(cluster.dir, "pushee-creds"), 0o700)
    cert, key, aid = sigil.find_agent_credentials(a.data, d)
    assert aid == a.spiffe_id
    return {"agent": a, "cert": cert, "key": key, "first": first}


@pytest.fixture
def stream(cluster, env, pushee):
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, pushee["cert"], pushee["key"])
    s = SyncStream(b, env.node)
    yield s
    s.close()
    b.close()


def test_push_first_message_is_full_state(stream, pushee):
    _, m = stream.next(5)
    assert not isinstance(m, grpc.RpcError) and m is not None, m
    assert pushee["first"] in _ids(m)
    assert m.bundle.x509_authorities
    assert m.revision > 0
    # The stream stays open: no end follows the first message.
    with pytest.raises(queue.Empty):
        stream.next(0.5)


def test_push_entry_create_and_delete_reach_open_stream(cluster, stream, pushee):
    _, first = stream.next(5)
    wid = sigil.TD_ID + "/push/created"
    assert wid not in _ids(first)

    t0 = time.monotonic()
    eid = cluster.create_entry(wid, pushee["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    t1 = time.monotonic()
    t, m, _ = stream.wait_for(lambda x: wid in _ids(x), 5)
    print("entry create -> Sync push: %.1f ms after the CLI returned (%.1f ms after it started)"
          % (max(0.0, t - t1) * 1000, (t - t0) * 1000))
    assert t - t1 <= PUSH_LIMIT_S, "push took %.3fs" % (t - t1)
    assert m.revision >= first.revision
    created = [e for e in m.entries if e.spiffe_id == wid][0]
    assert created.id == eid and created.revision > 0
    assert pushee["first"] in _ids(m)

    t1 = time.monotonic()
    r = cluster.server_cli("entry delete", "-entryID", eid)
    assert r.returncode == 0, r.out
    t2 = time.monotonic()
    t, gone, _ = stream.wait_for(lambda x: wid not in _ids(x), 5)
    print("entry delete -> Sync push: %.1f ms" % (max(0.0, t - t2) * 1000))
    assert t - t2 <= PUSH_LIMIT_S
    assert gone.revision > m.revision
    assert pushee["first"] in _ids(gone)

    # Recreated with the same SPIFFE ID: a new entry with a new revision.
    eid2 = cluster.create_entry(wid, pushee["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    _, again, _ = stream.wait_for(lambda x: wid in _ids(x), 5)
    e2 = [e for e in again.entries if e.spiffe_id == wid][0]
    assert e2.id == eid2 and e2.id != eid
    assert e2.revision > created.revision
    assert again.revision > gone.revision
    r = cluster.server_cli("entry delete", "-entryID", eid2)
    assert r.returncode == 0, r.out
    stream.wait_for(lambda x: wid not in _ids(x), 5)


def test_push_skips_agents_that_see_no_change(cluster, agent, stream, pushee):
    stream.next(5)
    # An entry for the other agent: nothing for this one.
    cluster.create_entry(sigil.TD_ID + "/push/elsewhere", agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    with pytest.raises(queue.Empty):
        stream.next(1.0)


def test_push_burst_is_coalesced(cluster, stream, pushee):
    _, first = stream.next(5)
    ids = [sigil.TD_ID + "/push/burst-%d" % i for i in range(5)]
    for w in ids:
        cluster.create_entry(w, pushee["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    _, m, seen = stream.wait_for(lambda x: set(ids) <= _ids(x), 5)
    # Every message is a full state and revisions never go back.
    revs = [first.revision] + [x.revision for x in seen] + [m.revision]
    assert revs == sorted(revs), revs
    assert len(seen) <= len(ids)


def test_push_evicted_agent_stream_ends(cluster, env, stream, pushee):
    stream.next(5)
    t0 = time.monotonic()
    r = cluster.server_cli("agent evict", "-spiffeID", pushee["agent"].spiffe_id)
    assert r.returncode == 0, r.out
    t, end = stream.wait_end(5)
    print("agent evict -> Sync ended: %.1f ms" % ((t - t0) * 1000))
    assert isinstance(end, grpc.RpcError), end
    assert end.code() == grpc.StatusCode.PERMISSION_DENIED, (end.code(), end.details())
    assert "agent was evicted" in end.details()


def test_push_banned_agent_stream_ends(cluster, env):
    a = cluster.start_agent("bannee")
    w = sigil.TD_ID + "/push/bannee"
    cluster.create_entry(w, a.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, a.sock, w)
    d = sigil.mkdir(os.path.join(cluster.dir, "bannee-creds"), 0o700)
    cert, key, _ = sigil.find_agent_credentials(a.data, d)
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, cert, key)
    s = SyncStream(b, env.node)
    try:
        _, m = s.next(5)
        assert w in _ids(m)
        r = cluster.server_cli("agent ban", "-spiffeID", a.spiffe_id)
        assert r.returncode == 0, r.out
        _, end = s.wait_end(5)
        assert isinstance(end, grpc.RpcError), end
        assert end.code() == grpc.StatusCode.PERMISSION_DENIED, (end.code(), end.details())
        assert "agent is banned" in end.details()
    finally:
        s.close()
        b.close()
