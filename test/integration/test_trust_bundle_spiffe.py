"""The agent's trust bundle in SPIFFE format (trust_bundle_format = "spiffe").

 1. the server's own `bundle show -format spiffe` output bootstraps an agent
    that attests and hands out an SVID
 2. a bad SPIFFE bundle stops the agent at start with an error naming the
    file and what is wrong with it
"""

import json
import os

import pytest

import sigil

WID = sigil.TD_ID + "/spiffe-bundle/workload"


@pytest.fixture(scope="module")
def srv(env):
    c = sigil.Cluster(env, "trust_bundle_spiffe")
    try:
        c.start_server()
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


def spiffe_agent(c, name, bundle_text):
    path = os.path.join(c.dir, name + ".bundle.json")
    with open(path, "w") as f:
        f.write(bundle_text)
    a = c.write_agent_conf(name, trust_bundle_path=path)
    with open(a.conf) as f:
        text = f.read()
    text = text.replace('trust_domain = "', 'trust_bundle_format = "spiffe"\n    trust_domain = "', 1)
    with open(a.conf, "w") as f:
        f.write(text)
    c.agents[name] = a
    return a, path


def test_spiffe_bundle_bootstraps_agent(srv, env):
    r = srv.server_cli("bundle show", "-format", "spiffe")
    assert r.returncode == 0, r.out
    a, _ = spiffe_agent(srv, "good", r.stdout)
    a.start(srv.token())
    a.wait_socket()
    sigil.wait_until(lambda: a.spiffe_id in srv.agent_ids(), 20, what="agent attested")
    srv.create_entry(WID, a.spiffe_id, ["unix:uid:%d" % os.getuid()])
    svid = sigil.wait_for_svid(env.wl, a.sock, WID)
    assert svid.spiffe_id == WID


BAD = [
    ("notjson", "not json at all", "invalid JSON"),
    ("nokeys", '{"spiffe_sequence": 1}', '"keys" is missing'),
    ("keysnotarray", '{"keys": "nope"}', '"keys" is not an array'),
    ("badx5c", json.dumps({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AAAA"]}]}), "keys[0]"),
    ("onlyjwt", json.dumps({"keys": []}), "holds no x509-svid authority"),
]


@pytest.mark.parametrize("name,text,want", BAD, ids=[b[0] for b in BAD])
def test_bad_spiffe_bundle_refused(srv, name, text, want):
    a, path = spiffe_agent(srv, "bad-" + name, text)
    d = a.start(srv.token())
    sigil.wait_until(lambda: not d.alive(), 20, what="agent with a bad bundle to exit")
    assert d.proc.returncode != 0
    log = d.log()
    assert path in log, log
    assert "invalid SPIFFE bundle" in log or "holds no x509-svid authority" in log, log
    assert want in log, log
