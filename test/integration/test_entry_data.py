"""`sigil-server entry create -data file.json`: bulk registration in SPIRE's JSON shape."""

import json
import os
import re
import time

import sigil

UID = os.getuid()


def sel(uid=UID):
    return [{"type": "unix", "value": "uid:%d" % uid}]


def write(cluster, name, doc):
    path = os.path.join(cluster.dir, name)
    with open(path, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def stored(cluster, prefix):
    """spiffe_id -> stored entry, for the entries under prefix."""
    out = {}
    for e in sigil.find_entries(cluster.entries_json()):
        sid = sigil.id_str(e.get("spiffe_id"))
        if sid and sid.startswith(prefix):
            out[sid] = e
    return out


def data_cli(cluster, *args, input_=None, timeout=60):
    return sigil.run([sigil.SERVER_BIN, "entry", "create", "-socketPath", cluster.admin_sock] + list(args),
                     input_=input_, timeout=timeout)


def test_data_creates_entries_from_file(cluster, agent):
    pre = sigil.TD_ID + "/data/ok/"
    doc = {"entries": [
        {"spiffe_id": pre + "a", "parent_id": agent.spiffe_id, "selectors": sel(), "x509_svid_ttl": 600},
        {"spiffe_id": pre + "b", "parent_id": agent.spiffe_id, "selectors": sel(),
         "dns_names": ["b.example.org", "b2.example.org"], "hint": "backend", "jwt_svid_ttl": 300,
         "admin": False, "downstream": False, "federates_with": []},
        # Newer SPIRE writes IDs as objects.
        {"id": "data-ok-c", "spiffe_id": {"trust_domain": sigil.TD, "path": "/data/ok/c"},
         "parent_id": {"trust_domain": sigil.TD, "path": agent.spiffe_id[len(sigil.TD_ID):]},
         "selectors": sel() + [{"type": "unix", "value": "gid:%d" % os.getgid()}]},
    ]}
    r = cluster.server_cli("entry create", "-data", write(cluster, "ok.json", doc))
    assert r.returncode == 0, r.out
    assert len(re.findall(r"Entry ID\s*:\s*\S+", r.stdout)) == 3, r.out
    assert "Hint             : backend" in r.stdout and "DNS name         : b.example.org" in r.stdout, r.out

    got = stored(cluster, pre)
    assert sorted(got) == [pre + "a", pre + "b", pre + "c"], got
    assert got[pre + "a"]["x509_svid_ttl"] == 600
    b = got[pre + "b"]
    assert b["hint"] == "backend" and b["dns_names"] == ["b.example.org", "b2.example.org"], b
    assert b["jwt_svid_ttl"] == 300
    c = got[pre + "c"]
    assert c["id"] == "data-ok-c" and sigil.id_str(c["parent_id"]) == agent.spiffe_id, c
    assert len(c["selectors"]) == 2

    shown = cluster.server_cli("entry show")
    assert shown.returncode == 0, shown.out
    for sid in got:
        assert sid in shown.stdout, shown.out


def test_data_reports_refused_entries_and_creates_the_rest(cluster, agent):
    pre = sigil.TD_ID + "/data/mixed/"
    cluster.create_entry(pre + "dup", agent.spiffe_id, ["unix:uid:%d" % UID])
    doc = {"entries": [
        {"spiffe_id": pre + "good1", "parent_id": agent.spiffe_id, "selectors": sel()},
        {"spiffe_id": pre + "dup", "parent_id": agent.spiffe_id, "selectors": sel()},
        {"spiffe_id": "not-a-spiffe-id", "parent_id": agent.spiffe_id, "selectors": sel()},
        {"spiffe_id": pre + "good2", "parent_id": agent.spiffe_id, "selectors": sel()},
    ]}
    r = cluster.server_cli("entry create", "-data", write(cluster, "mixed.json", doc))
    assert r.returncode == 1, r.out
    fails = re.findall(r"Failed to create the following entry \(code: (\w+), msg: (.*)\):", r.stderr)
    assert [f[0] for f in fails] == ["AlreadyExists", "InvalidArgument"], r.out
    assert re.search(r"(?i)(exist|duplicate)", fails[0][1]), r.out
    assert "not-a-spiffe-id" in r.stderr, r.out
    assert pre + "dup" in r.stderr
    got = stored(cluster, pre)
    assert sorted(got) == [pre + "dup", pre + "good1", pre + "good2"], got
    assert pre + "good1" in r.stdout and pre + "good2" in r.stdout, r.out

    # -output json: one result per entry, in file order, with the status of each.
    doc = {"entries": [
        {"spiffe_id": pre + "dup", "parent_id": agent.spiffe_id, "selectors": sel()},
        {"spiffe_id": pre + "good3", "parent_id": agent.spiffe_id, "selectors": sel()},
    ]}
    r = cluster.server_cli("entry create", "-output", "json", "-data", write(cluster, "mixed2.json", doc))
    assert r.returncode == 1, r.out
    res = json.loads(r.stdout)["results"]
    assert [x["status"]["code"] for x in res] == [6, 0], res
    assert sigil.id_str(res[1]["entry"]["spiffe_id"]) == pre + "good3"
    assert res[1]["entry"]["id"]


MALFORMED = [
    ("syntax", '{"entries": [{"spiffe_id": ', r"(?i)invalid JSON at line 1"),
    ("no-entries", '{"entry": []}', r"entries"),
    ("selectors-not-list", None, r"entries\[1\]: selectors: want a list"),
    ("ttl-not-int", None, r"entries\[1\]: x509_svid_ttl"),
    ("unknown-field", None, r"entries\[1\]: unknown field \"spiffeID\""),
]


def malformed_doc(case, agent, pre):
    good = {"spiffe_id": pre + "first", "parent_id": agent.spiffe_id, "selectors": sel()}
    bad = {"spiffe_id": pre + "second", "parent_id": agent.spiffe_id, "selectors": sel()}
    if case == "selectors-not-list":
        bad["selectors"] = "unix:uid:0"
    elif case == "ttl-not-int":
        bad["x509_svid_ttl"] = "soon"
    elif case == "unknown-field":
        bad["spiffeID"] = bad.pop("spiffe_id")
    return {"entries": [good, bad]}


def test_data_malformed_file_creates_nothing(cluster, agent):
    pre = sigil.TD_ID + "/data/malformed/"
    before = len(sigil.find_entries(cluster.entries_json()))
    for name, text, want in MALFORMED:
        doc = text if text is not None else malformed_doc(name, agent, pre)
        r = cluster.server_cli("entry create", "-data", write(cluster, "bad-%s.json" % name, doc))
        assert r.returncode == 1, "%s: %s" % (name, r.out)
        assert re.search(want, r.stderr), "%s: message does not name the problem: %r" % (name, r.out)
    # Size limits: over 64 MiB (a sparse file) and over 100,000 entries.
    big = os.path.join(cluster.dir, "huge.json")
    with open(big, "w") as f:
        f.truncate(64 * 1024 * 1024 + 1)
    r = cluster.server_cli("entry create", "-data", big)
    assert r.returncode == 1 and "64 MiB" in r.stderr, r.out
    r = cluster.server_cli("entry create", "-data", write(cluster, "many.json", '{"entries": [%s]}' % ",".join(["{}"] * 100001)))
    assert r.returncode == 1 and re.search(r"100001 entries.*100000", r.stderr), r.out
    r = cluster.server_cli("entry create", "-data", os.path.join(cluster.dir, "missing.json"))
    assert r.returncode == 1 and "missing.json" in r.stderr, r.out
    assert len(sigil.find_entries(cluster.entries_json())) == before, "a malformed file created entries"


def test_data_from_stdin(cluster, agent):
    pre = sigil.TD_ID + "/data/stdin/"
    doc = {"entries": [{"spiffe_id": pre + "x", "parent_id": agent.spiffe_id, "selectors": sel(),
                        "hint": "from-stdin"}]}
    r = data_cli(cluster, "-data", "-", input_=json.dumps(doc).encode())
    assert r.returncode == 0, r.out
    got = stored(cluster, pre)
    assert list(got) == [pre + "x"] and got[pre + "x"]["hint"] == "from-stdin", got


def test_data_with_entry_flags_is_usage_error(cluster, agent):
    pre = sigil.TD_ID + "/data/mixedflags/"
    path = write(cluster, "flags.json", {"entries": [
        {"spiffe_id": pre + "x", "parent_id": agent.spiffe_id, "selectors": sel()}]})
    r = cluster.server_cli("entry create", "-data", path, "-spiffeID", pre + "y")
    assert r.returncode == 1, r.out
    assert re.search(r"-data.*-spiffeID", r.stderr), r.out
    r = cluster.server_cli("entry create", "-selector", "unix:uid:0", "-data", path)
    assert r.returncode == 1 and "-selector" in r.stderr, r.out
    assert stored(cluster, pre) == {}


def test_data_thousand_entries(cluster, agent):
    pre = sigil.TD_ID + "/data/bulk/"
    n = 1000
    doc = {"entries": [{"spiffe_id": pre + "w%04d" % i, "parent_id": agent.spiffe_id,
                        "selectors": sel(100000 + i)} for i in range(n)]}
    path = write(cluster, "bulk.json", doc)
    t0 = time.monotonic()
    r = cluster.server_cli("entry create", "-output", "json", "-data", path, timeout=120)
    took = time.monotonic() - t0
    print("entry create -data with %d entries: %.2f s" % (n, took))
    assert r.returncode == 0, r.out[-2000:]
    res = json.loads(r.stdout)["results"]
    assert len(res) == n and all(x["status"]["code"] == 0 for x in res)
    c = cluster.server_cli("entry count")
    assert c.returncode == 0, c.out
    assert len(stored(cluster, pre)) == n
