"""Join tokens are single-use and expire.

A refused agent either exits non-zero, or keeps running (it retries with
backoff) while its Workload API answers UNAVAILABLE; in both cases its log
says why. refused() accepts exactly those two outcomes.
"""

import os
import re
import time

import grpc
import pytest

import sigil

REFUSAL_WORDS = re.compile(r"(?i)(used|expired|invalid|unknown|refused|denied|reject|not found|fail)")


def refused(cluster, agent, env, timeout=12):
    """Waits for the agent to show it was refused; returns a description."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if not agent.daemon.alive():
            rc = agent.daemon.proc.returncode
            assert rc != 0, "refused agent exited with status 0"
            seen = "exited with %d" % rc
            break
        try:
            with sigil.Workload(env.wl, agent.sock) as w:
                code, _, resp = w.call("FetchX509SVID", timeout=2)
        except Exception:  # noqa: BLE001 - socket not there yet
            code, resp = None, None
        assert code != grpc.StatusCode.OK, "refused agent served SVIDs: %r" % resp
        if code == grpc.StatusCode.UNAVAILABLE and os.path.exists(agent.sock) and REFUSAL_WORDS.search(agent.daemon.log() or ""):
            # Stay a little longer: it must not start serving after a retry.
            time.sleep(2)
            with sigil.Workload(env.wl, agent.sock) as w:
                code2, _, _ = w.call("FetchX509SVID", timeout=2)
            assert code2 == grpc.StatusCode.UNAVAILABLE, code2
            seen = "running, Workload API UNAVAILABLE"
            break
        time.sleep(0.5)
    assert seen, "agent neither exited nor answered UNAVAILABLE within %ds" % timeout
    log = agent.daemon.log()
    assert re.search(r"(?i)(token|attest)", log) and REFUSAL_WORDS.search(log), \
        "agent log does not say why it was refused:\n" + log[-3000:]
    return seen


@pytest.fixture(scope="module")
def first(cluster, agent, env):
    """The module agent attested with its token and serves an entry."""
    wid = sigil.TD_ID + "/jt/first"
    cluster.create_entry(wid, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, wid)
    return agent


def test_join_token_reuse_refused(cluster, first, env):
    a2 = cluster.write_agent_conf("agent-reuse")
    cluster.agents["agent-reuse"] = a2
    a2.start(first.token)
    outcome = refused(cluster, a2, env)
    # The server still knows exactly one agent for that token.
    assert cluster.agent_ids().count(first.spiffe_id) == 1, outcome
    # The refusal is on the server's side too.
    assert first.daemon.alive() and cluster.server.alive()


def test_join_token_expired_refused(cluster, env):
    tok = cluster.token(ttl=1)
    time.sleep(2.2)
    a3 = cluster.write_agent_conf("agent-expired")
    cluster.agents["agent-expired"] = a3
    a3.start(tok)
    refused(cluster, a3, env)
    assert a3.spiffe_id not in cluster.agent_ids()


def test_join_token_unknown_refused(cluster, env):
    a4 = cluster.write_agent_conf("agent-unknown")
    cluster.agents["agent-unknown"] = a4
    a4.start("00000000-0000-0000-0000-000000000000")
    refused(cluster, a4, env)
    assert a4.spiffe_id not in cluster.agent_ids()


def test_join_token_first_agent_unaffected(cluster, first, env):
    with sigil.Workload(env.wl, first.sock) as w:
        resp = w.x509()
    assert sigil.TD_ID + "/jt/first" in [s.spiffe_id for s in resp.svids]
