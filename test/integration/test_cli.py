"""sigil-server / sigil-agent command lines: outputs, validation errors, evict."""

import json
import os
import re
import stat
import subprocess
import time

import grpc
import pytest

import sigil

UID_SEL = "unix:uid:%d" % os.getuid()


# --------------------------------------------------------------------------
# entry create: table of bad input -> exit 1 and a message naming the problem

BAD_ENTRIES = [
    # (id, args, what the message must contain (regex))
    ("bad-spiffe-id", ["-spiffeID", "not-a-spiffe-id", "-parentID", "{agent}", "-selector", UID_SEL], r"not-a-spiffe-id"),
    ("uppercase-td", ["-spiffeID", "spiffe://EXAMPLE.org/w", "-parentID", "{agent}", "-selector", UID_SEL], r"(?i)(EXAMPLE\.org|trust domain)"),
    ("empty-segment", ["-spiffeID", "spiffe://example.org/a//b", "-parentID", "{agent}", "-selector", UID_SEL], r"(?i)(a//b|segment)"),
    ("foreign-td", ["-spiffeID", "spiffe://other.org/w", "-parentID", "{agent}", "-selector", UID_SEL], r"other\.org"),
    ("bad-parent", ["-spiffeID", "spiffe://example.org/w", "-parentID", "http://example.org/x", "-selector", UID_SEL], r"(?i)(http://example\.org/x|parent)"),
    ("no-selector", ["-spiffeID", "spiffe://example.org/w", "-parentID", "{agent}"], r"(?i)selector"),
    ("bad-selector", ["-spiffeID", "spiffe://example.org/w", "-parentID", "{agent}", "-selector", "nocolon"], r"(?i)(nocolon|selector)"),
    ("bad-ttl", ["-spiffeID", "spiffe://example.org/w", "-parentID", "{agent}", "-selector", UID_SEL, "-x509SVIDTTL", "soon"], r"(?i)(soon|ttl)"),
    # A workload given the server's ID could impersonate the server to agents.
    ("reserved-server-id", ["-spiffeID", "spiffe://example.org/spire/server", "-parentID", "{agent}", "-selector", UID_SEL], r"(?i)reserved"),
    ("reserved-agent-id", ["-spiffeID", "spiffe://example.org/spire/agent/join_token/x", "-parentID", "{agent}", "-selector", UID_SEL], r"(?i)reserved"),
]


@pytest.mark.parametrize("case", BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_cli_entry_create_rejects_bad_input(cluster, agent, case):
    _, args, want = case
    args = [a.replace("{agent}", agent.spiffe_id) for a in args]
    before = len(sigil.find_entries(cluster.entries_json()))
    r = cluster.server_cli("entry create", *args)
    assert r.returncode == 1, "exit %s: %s" % (r.returncode, r.out)
    assert re.search(want, r.out), "message does not name the problem: %r" % r.out
    assert len(sigil.find_entries(cluster.entries_json())) == before, "a rejected entry was stored"


def test_cli_entry_create_duplicate_rejected(cluster, agent):
    wid = sigil.TD_ID + "/cli/dup"
    cluster.create_entry(wid, agent.spiffe_id, [UID_SEL])
    r = cluster.server_cli("entry create", "-spiffeID", wid, "-parentID", agent.spiffe_id, "-selector", UID_SEL)
    assert r.returncode == 1, r.out
    assert re.search(r"(?i)(exist|duplicate)", r.out), r.out


def test_cli_entry_create_prints_entry(cluster, agent):
    wid = sigil.TD_ID + "/cli/printed"
    r = cluster.server_cli("entry create", "-spiffeID", wid, "-parentID", agent.spiffe_id, "-selector", UID_SEL,
                           "-dns", "printed.example.org", "-x509SVIDTTL", "600")
    assert r.returncode == 0, r.out
    assert re.search(r"Entry ID\s*:\s*\S+", r.stdout), r.out
    assert wid in r.stdout and agent.spiffe_id in r.stdout and UID_SEL.split(":", 1)[1] in r.stdout


def test_cli_entry_show_json(cluster, agent):
    wid = sigil.TD_ID + "/cli/json"
    eid = cluster.create_entry(wid, agent.spiffe_id, [UID_SEL, "unix:gid:%d" % os.getgid()])
    data = cluster.entries_json()
    mine = [e for e in sigil.find_entries(data) if sigil.id_str(e.get("spiffe_id")) == wid]
    assert len(mine) == 1, data
    e = mine[0]
    assert (e.get("id") or e.get("entry_id")) == eid
    assert sigil.id_str(e["parent_id"]) == agent.spiffe_id
    sels = json.dumps(e["selectors"])
    assert "uid" in sels and "gid" in sels


def test_cli_entry_delete_then_gone(cluster, agent):
    wid = sigil.TD_ID + "/cli/delete-me"
    eid = cluster.create_entry(wid, agent.spiffe_id, [UID_SEL])
    r = cluster.server_cli("entry delete", "-entryID", eid)
    assert r.returncode == 0, r.out
    assert wid not in [sigil.id_str(e.get("spiffe_id")) for e in sigil.find_entries(cluster.entries_json())]
    r = cluster.server_cli("entry delete", "-entryID", eid)
    assert r.returncode == 1, r.out
    assert eid in r.out or re.search(r"(?i)not found", r.out), r.out


def test_cli_token_generate_json(cluster):
    r = cluster.server_cli("token generate", "-output", "json")
    assert r.returncode == 0, r.out
    d = json.loads(r.stdout)
    assert isinstance(d["value"], str) and len(d["value"]) >= 16
    exp = int(d["expires_at"])
    assert abs(exp - (time.time() + 600)) < 60, exp


def test_cli_token_generate_refuses_reserved_id(cluster):
    r = cluster.server_cli("token generate", "-spiffeID", "spiffe://example.org/spire/server")
    assert r.returncode == 1, r.out
    assert "reserved" in r.out, r.out


def test_cli_token_generate_human(cluster):
    r = cluster.server_cli("token generate", "-ttl", "60")
    assert r.returncode == 0, r.out
    assert re.fullmatch(r"Token: \S+\n?", r.stdout), r.stdout


def test_cli_agent_list_and_show(cluster, agent):
    assert agent.spiffe_id in cluster.agent_ids()
    r = cluster.server_cli("agent show", "-spiffeID", agent.spiffe_id)
    assert r.returncode == 0, r.out
    assert agent.spiffe_id in r.stdout
    r = cluster.server_cli("agent show", "-spiffeID", sigil.TD_ID + "/spire/agent/join_token/nope")
    assert r.returncode == 1, r.out


def test_cli_bundle_show_pem_verifies(cluster):
    pem = cluster.bundle_pem()
    path = os.path.join(cluster.dir, "bundle-check.pem")
    with open(path, "w") as f:
        f.write(pem)
    v = sigil.run(["openssl", "verify", "-CAfile", path, path])
    assert v.returncode == 0, v.out


def test_cli_bundle_show_spiffe_format(cluster):
    r = cluster.server_cli("bundle show", "-format", "spiffe")
    assert r.returncode == 0, r.out
    d = json.loads(r.stdout)
    keys = [k for k in d["keys"] if k.get("use") == "x509-svid"]
    assert keys and all(len(k["x5c"]) == 1 and "kid" not in k for k in keys), d


def test_cli_admin_socket_dir_owner_only(cluster):
    d = os.path.dirname(cluster.admin_sock)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cluster.admin_sock).st_mode) & 0o077 == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run the CLI under another uid")
def test_cli_admin_socket_refuses_other_uid(cluster):
    # Even with the directory opened up, the socket itself is owner-only.
    d = os.path.dirname(cluster.admin_sock)
    os.chmod(d, 0o755)
    try:
        p = subprocess.run([sigil.SERVER_BIN, "healthcheck", "-socketPath", cluster.admin_sock], user=65534,
                           group=65534, extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    finally:
        os.chmod(d, 0o700)
    assert p.returncode != 0, p.stdout


def test_cli_unknown_subcommand_and_flag(cluster):
    for args in (["entry", "frobnicate"], ["entry", "create", "-nosuchflag", "x"], ["nosuchcommand"]):
        r = sigil.run([sigil.SERVER_BIN] + args + ["-socketPath", cluster.admin_sock])
        assert r.returncode > 0, (args, r.returncode, r.out)
        assert r.out.strip(), args


def test_cli_server_not_running_is_clear_error(cluster):
    r = sigil.run([sigil.SERVER_BIN, "entry", "show", "-socketPath", os.path.join(cluster.dir, "nope.sock")])
    assert r.returncode == 1, r.out
    assert "nope.sock" in r.out, r.out


# --------------------------------------------------------------------------
# validate: config errors name the line


GOOD_SERVER = """server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    trust_domain = "example.org"
    data_dir = "/tmp/x"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "/tmp/x/ds.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
"""


def _conf(cluster, name, text):
    p = os.path.join(cluster.dir, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def test_cli_validate_good_config(cluster):
    r = sigil.run([sigil.SERVER_BIN, "validate", "-config", _conf(cluster, "good.conf", GOOD_SERVER)])
    assert r.returncode == 0, r.out


BAD_CONFIGS = [
    ("unknown-key", GOOD_SERVER.replace('    bind_port = "8081"', '    bind_prot = "8081"'), 3, "bind_prot"),
    ("unknown-plugin", GOOD_SERVER.replace('NodeAttestor "join_token"', 'NodeAttestor "aws_iid"'), 14, "aws_iid"),
    ("bad-port", GOOD_SERVER.replace('"8081"', '"80x81"'), 3, "80x81"),
    ("bad-td", GOOD_SERVER.replace('"example.org"', '"Example.org/x"'), 4, "Example.org/x"),
    ("syntax", GOOD_SERVER.replace('    data_dir = "/tmp/x"', '    data_dir = "/tmp/x'), 5, None),
    ("bad-duration", GOOD_SERVER.replace('    data_dir = "/tmp/x"\n',
                                         '    data_dir = "/tmp/x"\n    ca_ttl = "10 parsecs"\n'), 6, "10 parsecs"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_cli_validate_bad_config_names_line(cluster, case):
    name, text, line, word = case
    path = _conf(cluster, name + ".conf", text)
    r = sigil.run([sigil.SERVER_BIN, "validate", "-config", path])
    assert r.returncode != 0 and r.returncode < 128, (r.returncode, r.out)
    assert re.search(r"\b%d\b" % line, r.out), "line %d not named: %r" % (line, r.out)
    if word:
        assert word in r.out, r.out


def test_cli_agent_validate_names_line(cluster, agent):
    text = open(agent.conf).read()
    assert sigil.run([sigil.AGENT_BIN, "validate", "-config", agent.conf]).returncode == 0
    lines = text.split("\n")
    lines.insert(2, '    server_prot = "1"')
    path = _conf(cluster, "agent-bad.conf", "\n".join(lines))
    r = sigil.run([sigil.AGENT_BIN, "validate", "-config", path])
    assert r.returncode != 0 and r.returncode < 128, r.out
    assert "server_prot" in r.out and re.search(r"\b3\b", r.out), r.out


# --------------------------------------------------------------------------
# agent evict: the evicted agent is refused by the server


REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _sync(bridge, pb):
    with bridge.channel() as ch:
        it = ch.unary_stream("/sigil.node.v1.Node/Sync", request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=pb.SyncResponse.FromString)(pb.SyncRequest(), timeout=5)
        try:
            return next(it)
        finally:
            it.cancel()


def test_cli_agent_evict_refuses_agent(cluster, env):
    ev = cluster.start_agent("evictee")
    w1 = sigil.TD_ID + "/cli/evictee-before"
    cluster.create_entry(w1, ev.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, ev.sock, w1)
    creds = sigil.mkdir(os.path.join(cluster.dir, "evictee-creds"), 0o700)
    cert, key, aid = sigil.find_agent_credentials(ev.data, creds)
    assert aid == ev.spiffe_id
    bridge = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, cert, key)
    try:
        assert _sync(bridge, env.node) is not None

        r = cluster.server_cli("agent evict", "-spiffeID", ev.spiffe_id)
        assert r.returncode == 0, r.out
        assert ev.spiffe_id not in cluster.agent_ids()

        with pytest.raises(grpc.RpcError) as ei:
            _sync(bridge, env.node)
        assert ei.value.code() in REFUSED, (ei.value.code(), ei.value.details())
    finally:
        bridge.close()

    # Cut off from the server, the evicted agent keeps running and its
    # workloads keep the SVIDs they hold until those expire.
    def refused_logged():
        return "attestation" in ev.daemon.log() and "join token" in ev.daemon.log()

    sigil.wait_until(refused_logged, 20, what="the evicted agent noticing it was refused")
    assert ev.daemon.alive(), "an evicted agent must keep serving what it holds"
    assert sigil.wait_for_svid(env.wl, ev.sock, w1, timeout=5) is not None

    # A new entry for the evicted agent never reaches it, even after a
    # restart without a token (re-attestation needs a new token).
    w2 = sigil.TD_ID + "/cli/evictee-after"
    cluster.create_entry(w2, ev.spiffe_id, ["unix:uid:%d" % os.getuid()])
    ev.stop()
    ev.start(None)
    time.sleep(8)
    if ev.daemon.alive() and os.path.exists(ev.sock):
        with sigil.Workload(env.wl, ev.sock) as w:
            code, details, resp = w.call("FetchX509SVID", timeout=3)
        if code == grpc.StatusCode.OK:
            assert w2 not in [s.spiffe_id for s in resp.svids]
    assert ev.spiffe_id not in cluster.agent_ids()


def test_cli_validate_expand_env(cluster):
    text = GOOD_SERVER.replace('"example.org"', '"$SIGIL_IT_TD"')
    path = _conf(cluster, "expand.conf", text)
    env = dict(os.environ, SIGIL_IT_TD="example.org")
    r = sigil.run([sigil.SERVER_BIN, "validate", "-config", path, "-expandEnv"], env=env)
    assert r.returncode == 0, r.out
    # Without -expandEnv the literal "$SIGIL_IT_TD" is not a trust domain.
    r = sigil.run([sigil.SERVER_BIN, "validate", "-config", path], env=env)
    assert r.returncode != 0 and "SIGIL_IT_TD" in r.out, r.out


def test_cli_run_flags_override_config(cluster):
    """-trustDomain and -dataDir on `run` win over the config file."""
    d = sigil.mkdir(os.path.join(cluster.dir, "override"), 0o700)
    sock = os.path.join(d, "admin.sock")
    text = open(cluster.server_conf).read()
    text = text.replace('"%s"' % cluster.admin_sock, '"%s"' % sock)
    text = text.replace('bind_port = "%d"' % cluster.port, 'bind_port = "%d"' % sigil.free_port())
    text = text.replace('trust_domain = "example.org"', 'trust_domain = "wrong.test"')
    text = text.replace('data_dir = "%s"' % cluster.data_dir, 'data_dir = "/nonexistent/sigil-it"')
    text = text.replace(cluster.data_dir + "/", d + "/")
    path = _conf(cluster, "override.conf", text)
    srv = sigil.Daemon("sigil-server[override]", [sigil.SERVER_BIN, "run", "-config", path, "-trustDomain",
                       "example.org", "-dataDir", d, "-logLevel", "info"], os.path.join(d, "server.log"))
    try:
        sigil.wait_until(lambda: srv.alive() and sigil.run([sigil.SERVER_BIN, "healthcheck", "-socketPath", sock])
                         .returncode == 0, 15, what="override server")
        r = sigil.run([sigil.SERVER_BIN, "entry", "create", "-socketPath", sock, "-spiffeID",
                       "spiffe://example.org/override", "-parentID", "spiffe://example.org/node", "-selector", "unix:uid:0"])
        assert r.returncode == 0, r.out
        assert not os.path.exists("/nonexistent/sigil-it")
    finally:
        ok, _, _ = srv.stop()
    assert ok, "override server did not stop within 5 s"


@pytest.mark.parametrize("group,expected", [
    ("bundle", ["bundle show", "bundle set", "bundle list", "bundle delete"]),
    ("federation", ["federation create", "federation refresh"]),
    ("localauthority", ["localauthority x509 taint", "localauthority jwt revoke"]),
])
def test_cli_group_lists_every_subcommand(group, expected):
    r = subprocess.run([sigil.SERVER_BIN, group], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert "a subcommand is required" in r.stderr
    for name in expected:
        assert name in r.stderr, (name, r.stderr)


def test_cli_usage_names_every_command_group():
    r = subprocess.run([sigil.SERVER_BIN], capture_output=True, text=True, timeout=10)
    for group in ["entry", "token", "agent", "bundle", "federation", "localauthority",
                  "upstreamauthority", "x509", "jwt", "healthcheck"]:
        assert re.search(r"^\s+" + group + r"\b", r.stdout + r.stderr, re.M), group
