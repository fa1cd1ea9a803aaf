"""Workload API error codes, as a SPIFFE client sees them."""

import json
import os
import subprocess

import grpc
import pytest

import sigil

ENTITLED = sigil.TD_ID + "/neg/entitled"
NOBODY_UID = 65534

# Every RPC of the Workload API, with a well-formed request.
def _requests(wl):
    return {
        "FetchX509SVID": wl.X509SVIDRequest(),
        "FetchX509Bundles": wl.X509BundlesRequest(),
        "FetchJWTSVID": wl.JWTSVIDRequest(audience=["x"]),
        "FetchJWTBundles": wl.JWTBundlesRequest(),
        "ValidateJWTSVID": wl.ValidateJWTSVIDRequest(audience="x", svid="a.b.c"),
        "FetchWITSVID": wl.WITSVIDRequest(),
        "FetchWITBundles": wl.WITBundlesRequest(),
    }


ALL_METHODS = ["FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles",
               "ValidateJWTSVID", "FetchWITSVID", "FetchWITBundles"]


@pytest.fixture(scope="module")
def entitled(cluster, agent, env):
    cluster.create_entry(ENTITLED, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, ENTITLED)
    return agent


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("metadata", [(), (("workload.spiffe.io", "false"),), (("workload.spiffe.io", "TRUE"),)],
                         ids=["missing", "false", "wrong-case"])
def test_workload_security_header_required(entitled, env, method, metadata):
    with sigil.Workload(env.wl, entitled.sock) as w:
        code, details, _ = w.call(method, _requests(env.wl)[method], metadata=metadata)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details, "INVALID_ARGUMENT without a message"


def test_workload_jwt_svid_empty_audience_invalid(entitled, env):
    with sigil.Workload(env.wl, entitled.sock) as w:
        code, details, _ = w.call("FetchJWTSVID", env.wl.JWTSVIDRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


@pytest.mark.parametrize("method", ["FetchWITSVID", "FetchWITBundles"])
def test_workload_unimplemented_rpcs_for_entitled_caller(entitled, env, method):
    with sigil.Workload(env.wl, entitled.sock) as w:
        code, details, _ = w.call(method, _requests(env.wl)[method])
    assert code == grpc.StatusCode.UNIMPLEMENTED, (code, details)


CHILD = r"""
import importlib.util, json, os, sys
import grpc
pydir, sock = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("wl", os.path.join(pydir, "spiffe/workload_pb2.py"))
wl = importlib.util.module_from_spec(spec); spec.loader.exec_module(wl)
ch = grpc.insecure_channel("unix:" + sock)
md = (("workload.spiffe.io", "true"),)
out = {"uid": os.getuid()}
try:
    it = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wl.X509SVIDResponse.FromString)(wl.X509SVIDRequest(), metadata=md, timeout=5)
    r = next(it)
    out["FetchX509SVID"] = ["OK", [s.spiffe_id for s in r.svids]]
except grpc.RpcError as e:
    out["FetchX509SVID"] = [e.code().name, e.details()]
try:
    ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wl.JWTSVIDResponse.FromString)(wl.JWTSVIDRequest(audience=["x"]), metadata=md, timeout=5)
    out["FetchJWTSVID"] = ["OK", ""]
except grpc.RpcError as e:
    out["FetchJWTSVID"] = [e.code().name, e.details()]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a workload under another uid")
def test_workload_other_uid_without_entry_permission_denied(entitled, env):
    script = os.path.join(env.base, "child_other_uid.py")
    with open(script, "w") as f:
        f.write(CHILD)
    os.chmod(script, 0o644)
    p = subprocess.run([sigil.PYTHON, script, env.pydir, entitled.sock], user=NOBODY_UID, group=NOBODY_UID,
                       extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout)
    assert out["uid"] == NOBODY_UID
    assert out["FetchX509SVID"][0] == "PERMISSION_DENIED", out
    assert out["FetchJWTSVID"][0] == "PERMISSION_DENIED", out


def test_workload_entitled_caller_still_served(entitled, env):
    """After all the refusals above, the agent still serves."""
    with sigil.Workload(env.wl, entitled.sock) as w:
        resp = w.x509()
    assert ENTITLED in [s.spiffe_id for s in resp.svids]
    assert entitled.daemon.alive()


SUPP_GID = 4242
SUPP_ID = sigil.TD_ID + "/errors/supplementary"


def _fetch_as_nobody(sock, extra_groups):
    """`sigil-agent api fetch x509` run as nobody with the given supplementary groups."""
    return subprocess.run([sigil.AGENT_BIN, "api", "fetch", "x509", "-socketPath", sock, "-timeout", "5s"],
                          user=NOBODY_UID, group=NOBODY_UID, extra_groups=extra_groups, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a workload with other groups")
def test_workload_supplementary_group_selector(cluster, agent, env, entitled):
    """An entry that needs unix:supplementary_gid serves only callers that had the group at connect."""
    cluster.create_entry(SUPP_ID, agent.spiffe_id, ["unix:uid:%d" % NOBODY_UID, "unix:supplementary_gid:%d" % SUPP_GID])

    def served():
        p = _fetch_as_nobody(agent.sock, [SUPP_GID])
        return p if p.returncode == 0 and SUPP_ID in p.stdout.decode() else None

    p = sigil.wait_until(served, 30, interval=0.5, what="an SVID for a caller in group %d" % SUPP_GID)
    assert SUPP_ID in p.stdout.decode()
    p = _fetch_as_nobody(agent.sock, [])
    assert p.returncode != 0, p.stdout.decode()
    assert SUPP_ID not in p.stdout.decode()
