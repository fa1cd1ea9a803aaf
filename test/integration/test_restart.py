"""Restarts: the server keeps entries and CA (KeyManager "disk"); the agent keeps its identity.

Steps run in order and share state:
 1. register an entry, fetch its SVID, note bundle, entries and agent ID
 2. SIGTERM the server while the agent is connected: it exits within 5 s; start it again
 3. entries, bundle and agents are unchanged
 4. SIGTERM the agent while a FetchX509SVID stream is open: it exits within 5 s
 5. start the agent without a join token: it serves again as the same agent
 6. SIGKILL the server (stale socket) and start it again: nothing lost
"""

import os
import time

import grpc
import pytest

import sigil

WID = sigil.TD_ID + "/restart/workload"
STATE = {}


@pytest.fixture(scope="module")
def c(cluster, agent, env):
    return cluster


def test_restart_1_baseline(c, agent, env):
    c.create_entry(WID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    svid = sigil.wait_for_svid(env.wl, agent.sock, WID)
    STATE["bundle"] = sigil.pem_ders(c.bundle_pem())
    STATE["entries"] = sorted(
        (sigil.id_str(e["spiffe_id"]), sigil.id_str(e["parent_id"])) for e in sigil.find_entries(c.entries_json()))
    STATE["agents"] = c.agent_ids()
    STATE["svid_bundle"] = svid.bundle
    assert agent.spiffe_id in STATE["agents"]


def test_restart_2_server_sigterm_with_agent_connected_and_start(c, agent):
    """The agent holds its node stream open; the server still stops within 5 s."""
    ok, secs, rc = c.stop_server()
    assert ok, "server did not exit within 5 s of SIGTERM"
    assert rc == 0, "server exit status %s after SIGTERM" % rc
    assert c.server_cli("healthcheck").returncode != 0
    assert agent.daemon.alive(), "the agent must survive its server going away"
    c.start_server()


def test_restart_3_server_keeps_entries_and_ca(c):
    entries = sorted(
        (sigil.id_str(e["spiffe_id"]), sigil.id_str(e["parent_id"])) for e in sigil.find_entries(c.entries_json()))
    assert entries == STATE["entries"]
    assert sigil.pem_ders(c.bundle_pem()) == STATE["bundle"]
    assert c.agent_ids() == STATE["agents"]


def test_restart_4_agent_sigterm_with_open_stream(c, agent, env):
    sigil.wait_for_svid(env.wl, agent.sock, WID, timeout=25)
    w = sigil.Workload(env.wl, agent.sock)
    stream = w.stream_x509(timeout=30)
    first = next(stream)
    assert WID in [s.spiffe_id for s in first.svids]
    ok, secs, rc = agent.stop()
    assert ok, "agent did not exit within 5 s of SIGTERM with a stream open"
    assert rc == 0, "agent exit status %s after SIGTERM" % rc
    # The open stream ends instead of hanging until its deadline.
    t0 = time.monotonic()
    try:
        for _ in stream:
            pass
    except grpc.RpcError as e:
        assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "stream was left open by the stopped agent"
    assert time.monotonic() - t0 < 5
    w.close()


def test_restart_5_agent_without_token_keeps_identity(c, agent, env):
    agent.start(None)
    agent.wait_socket()
    svid = sigil.wait_for_svid(env.wl, agent.sock, WID, timeout=25)
    assert svid.bundle == STATE["svid_bundle"]
    d = sigil.mkdir(os.path.join(c.dir, "after"))
    p = sigil.write_svid(svid, d, "w")
    v = sigil.openssl_verify(c.bundle_path, p["leaf"], p["chain"])
    assert v.returncode == 0, v.out
    assert c.agent_ids() == STATE["agents"], "agent list after restart: %r" % c.agent_ids()
    # Give it a sync round: still one agent, still serving.
    time.sleep(1)
    assert agent.daemon.alive()


def test_restart_6_server_killed_then_started_again(c, agent, env):
    """SIGKILL leaves a stale admin socket behind; the next start removes it and loses nothing."""
    c.server.proc.kill()
    c.server.proc.wait(5)
    c.start_server()
    assert sigil.pem_ders(c.bundle_pem()) == STATE["bundle"]
    entries = sorted(
        (sigil.id_str(e["spiffe_id"]), sigil.id_str(e["parent_id"])) for e in sigil.find_entries(c.entries_json()))
    assert entries == STATE["entries"]
    assert c.agent_ids() == STATE["agents"]
    # The agent reconnects and keeps serving.
    with sigil.Workload(env.wl, agent.sock) as w:
        assert WID in [s.spiffe_id for s in w.x509().svids]
