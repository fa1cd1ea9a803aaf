"""sigil-agent healthcheck and the health services on the Workload API socket.

Steps run in order and share the module's cluster:
 1. a healthy agent: `healthcheck` (plain, -shallow, -verbose) says so, exit 0
 2. grpc.health.v1.Health/Check answers a stock grpcio probe; AgentStatus/Get fields
 3. server stopped: the healthcheck warns of the outage but exits 0, and
    workloads still get their SVID; server started again: the warning goes
 4. an agent that never attested (server down at its start): exit 1
 5. an agent with a bad join token stops; the healthcheck fails
"""

import importlib.util
import os
import subprocess
import sys

import grpc
import pytest

import sigil

WID = sigil.TD_ID + "/health/workload"
WARNING = "warning: the server has been unreachable"
HEALTHY = "Agent is healthy."


def _load(pydir, rel, modname):
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, os.path.join(pydir, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pb(env):
    """health_pb2 and status_pb2, loaded by path (the `grpc` name is grpcio's)."""
    dest = os.path.join(env.base, "py_health")
    os.makedirs(dest, exist_ok=True)
    protos = ["grpc/health/v1/health.proto", "sigil/agent/v1/status.proto"]
    subprocess.run(
        ["protoc", "-I" + os.path.join(sigil.REPO, "proto"), "--python_out=" + dest]
        + [os.path.join(sigil.REPO, "proto", p) for p in protos],
        check=True,
    )
    health = _load(dest, "grpc/health/v1/health_pb2.py", "sigil_pb_health")
    status = _load(dest, "sigil/agent/v1/status_pb2.py", "sigil_pb_status")
    return health, status


def check(pb, sock, service=""):
    health, _ = pb
    with grpc.insecure_channel("unix:" + sock) as ch:
        call = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=health.HealthCheckResponse.FromString,
        )
        return call(health.HealthCheckRequest(service=service), timeout=5)


def status(pb, sock):
    _, st = pb
    with grpc.insecure_channel("unix:" + sock) as ch:
        call = ch.unary_unary(
            "/sigil.agent.v1.AgentStatus/Get",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=st.AgentStatusResponse.FromString,
        )
        return call(st.GetStatusRequest(), timeout=5)


def test_health_1_healthy(cluster, agent, env):
    cluster.create_entry(WID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, WID)
    r = agent.cli("healthcheck")
    assert r.returncode == 0, r.out
    assert r.stdout.strip() == HEALTHY, r.out
    assert WARNING not in r.out
    r = agent.cli("healthcheck", "-shallow")
    assert r.returncode == 0 and HEALTHY in r.stdout, r.out
    r = agent.cli("healthcheck", "-verbose")
    assert r.returncode == 0 and HEALTHY in r.stdout, r.out
    for field in ("attested: true", "server reachable: true", "agent SVID expires at:", "entries: 1",
                  "svids: 1", "bundle sequence:", "last error: -"):
        assert field in r.stdout, r.out


def test_health_2_grpcio_probe_and_status(cluster, agent, pb):
    health, _ = pb
    serving = health.HealthCheckResponse.SERVING
    assert check(pb, agent.sock).status == serving
    assert check(pb, agent.sock, "sigil.agent").status == serving
    with pytest.raises(grpc.RpcError) as e:
        check(pb, agent.sock, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    s = status(pb, agent.sock)
    assert s.attested and s.server_reachable, s
    assert s.agent_svid_expires_at > s.last_server_contact > 0, s
    assert s.unreachable_since == 0 and s.last_error == "", s
    assert s.entries == 1 and s.svids == 1, s


def test_health_3_server_outage(cluster, agent, env, pb):
    ok, _, _ = cluster.stop_server()
    assert ok

    def warned():
        r = agent.cli("healthcheck")
        assert r.returncode == 0, "unhealthy while serving cached SVIDs: " + r.out
        return r if WARNING in r.out else None

    r = sigil.wait_until(warned, 15, interval=0.5, what="the unreachable warning")
    assert HEALTHY in r.stdout, r.out
    assert "serving cached SVIDs until" in r.out and "last error: " in r.out, r.out
    assert agent.token not in r.out
    s = status(pb, agent.sock)
    assert not s.server_reachable and s.unreachable_since > 0 and s.last_error, s
    assert agent.token not in s.last_error and "spiffe://" not in s.last_error, s
    assert check(pb, agent.sock).status == pb[0].HealthCheckResponse.SERVING
    # Workloads keep getting their SVID from the cache.
    sigil.wait_for_svid(env.wl, agent.sock, WID, timeout=5)

    cluster.start_server()

    def recovered():
        r = agent.cli("healthcheck")
        assert r.returncode == 0, r.out
        return r if WARNING not in r.out else None

    r = sigil.wait_until(recovered, 45, interval=0.5, what="the warning to disappear")
    assert r.stdout.strip() == HEALTHY, r.out
    assert status(pb, agent.sock).server_reachable


def test_health_4_never_attested(cluster, pb):
    token = cluster.token()
    ok, _, _ = cluster.stop_server()
    assert ok
    try:
        cold = cluster.start_agent("cold", token=token)
        r = cold.cli("healthcheck")
        assert r.returncode == 1, r.out
        assert "Agent is unhealthy: not attested" in r.out, r.out
        assert check(pb, cold.sock).status == pb[0].HealthCheckResponse.NOT_SERVING
        s = status(pb, cold.sock)
        assert not s.attested and not s.server_reachable, s
        r = cold.cli("healthcheck", "-shallow")
        assert r.returncode == 1, r.out
    finally:
        cluster.start_server()
    # Once the server is back, the agent attests and becomes healthy.
    sigil.wait_until(lambda: cold.cli("healthcheck").returncode == 0, 45, interval=0.5,
                     what="the cold agent to become healthy")


def test_health_5_bad_token(cluster):
    bad = cluster.start_agent("badtoken", token="not-a-real-token", wait=False)
    sigil.wait_until(lambda: not bad.daemon.alive(), 20, what="the agent with a bad token to stop")
    r = bad.cli("healthcheck")
    assert r.returncode == 1, r.out
    assert "Agent is unhealthy" in r.out, r.out
