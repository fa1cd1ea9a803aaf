"""CA rotation through authority slots, and `localauthority x509` forced rotation.

The server runs with ca_ttl 60 s (default_x509_svid_ttl 6 s, agent_ttl 20 s), so
the next authority is prepared below 30 s of remaining life and activated below
10 s. Steps run in order and share the server:
 1. one active authority, nothing prepared; the bundle holds its root
 2. operator mistakes get clear errors (taint the active one, unknown IDs, ...)
 3. forced rotation: prepare -> activate -> taint the old one -> revoke is refused
    while its SVIDs may live (taint + agent_ttl), then succeeds; the old root
    leaves the bundle and the sequence grows at each change
 4. scheduled rotation: without any command, a new authority is prepared (and
    published), then activated; the bundle sequence grows
"""

import json
import re
import time

import pytest

import sigil

STATE = {}


@pytest.fixture(scope="module")
def c(env):
    c = sigil.Cluster(env, "test_ca_rotation")
    path = c.write_server_conf(extra_server='    ca_ttl = "60s"\n    agent_ttl = "20s"\n')
    text = open(path).read().replace('default_x509_svid_ttl = "1h"', 'default_x509_svid_ttl = "6s"')
    with open(path, "w") as f:
        f.write(text)
    try:
        c.start_server()
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


def show(c):
    p = c.server_cli("localauthority x509 show", "-output", "json")
    assert p.returncode == 0, p.out
    return json.loads(p.stdout)


def bundle(c):
    p = c.server_cli("bundle show", "-format", "spiffe")
    assert p.returncode == 0, p.out
    return json.loads(p.stdout)


def bundle_ids(c):
    """Authority IDs (hex SKIDs) of the roots in the bundle."""
    from cryptography import x509

    ids = set()
    for der in sigil.pem_ders(c.bundle_pem()):
        cert = x509.load_der_x509_certificate(der)
        ids.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex())
    return ids


def cli(c, *args):
    return c.server_cli("localauthority x509 " + args[0], *args[1:])


def test_ca_rotation_1_initial_state(c):
    s = show(c)
    assert "active" in s and "prepared" not in s and "old" not in s, s
    a = s["active"]["authority_id"]
    assert re.fullmatch(r"[0-9a-f]{40}", a), a
    assert int(s["active"]["expires_at"]) - time.time() <= 61
    assert bundle_ids(c) == {a}
    STATE["a"] = a
    STATE["seq"] = bundle(c)["spiffe_sequence"]
    p = cli(c, "show")
    assert p.returncode == 0, p.out
    assert "Active X.509 authority:" in p.stdout and "Authority ID: " + a in p.stdout, p.stdout
    assert "No prepared X.509 authority found" in p.stdout, p.stdout
    assert "No old X.509 authority found" in p.stdout, p.stdout


ERRORS = [
    # (args, exit message regex)
    (["taint", "-authorityID", "{a}"], r"only an old authority can be tainted"),
    (["revoke", "-authorityID", "{a}"], r"not tainted"),
    (["activate", "-authorityID", "{a}"], r"only the prepared authority can be activated"),
    (["activate"], r"authority ID is required"),
    (["taint", "-authorityID", "abcdef"], r"no CA authority with ID abcdef"),
    (["revoke", "-authorityID", "../../etc"], r"\.\./\.\./etc.*not valid"),
    (["show", "-authorityID", "x"], r"flag provided but not defined: -authorityID"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[" ".join(e[0][:1] + [str(i)]) for i, e in enumerate(ERRORS)])
def test_ca_rotation_2_operator_errors(c, case):
    args, want = case
    p = cli(c, *[x.replace("{a}", STATE["a"]) for x in args])
    assert p.returncode == 1, p.out
    assert re.search(want, p.stderr), p.out


def test_ca_rotation_3_forced_rotation_taint_revoke(c):
    a = STATE["a"]
    p = cli(c, "prepare", "-output", "json")
    assert p.returncode == 0, p.out
    b = json.loads(p.stdout)["prepared_authority"]["authority_id"]
    assert b != a
    # The prepared root is trusted before it signs anything.
    assert bundle_ids(c) == {a, b}
    seq = bundle(c)["spiffe_sequence"]
    assert seq > STATE["seq"]

    p = cli(c, "activate", "-authorityID", b)
    assert p.returncode == 0, p.out
    assert "Activated X.509 authority:" in p.stdout and b in p.stdout, p.out
    s = show(c)
    assert s["active"]["authority_id"] == b and s["old"]["authority_id"] == a, s

    p = cli(c, "taint", "-authorityID", a)
    assert p.returncode == 0, p.out
    tainted_at = time.time()
    assert show(c)["old"]["tainted"] is True
    p = cli(c, "taint", "-authorityID", a)
    assert p.returncode == 1 and "already tainted" in p.stderr, p.out

    # agent_ttl (20 s) bounds how long SVIDs of the tainted authority may live.
    p = cli(c, "revoke", "-authorityID", a)
    assert p.returncode == 1, p.out
    assert re.search(r"authority %s may still have live SVIDs until \S+; revoke after that" % a, p.stderr), p.out
    assert a in bundle_ids(c)

    def revoked():
        return cli(c, "revoke", "-authorityID", a).returncode == 0

    sigil.wait_until(revoked, 30, interval=1, what="revoke accepted after the taint window")
    assert time.time() - tainted_at >= 18
    assert bundle_ids(c) == {b}
    assert bundle(c)["spiffe_sequence"] > seq
    s = show(c)
    assert "old" not in s and s["active"]["authority_id"] == b, s
    STATE["b"] = b
    STATE["seq"] = bundle(c)["spiffe_sequence"]


def test_ca_rotation_4_scheduled_rotation(c):
    b = STATE["b"]
    seen = {}

    def prepared():
        s = show(c)
        if "prepared" in s:
            seen["p"] = s["prepared"]["authority_id"]
            return True
        return False

    sigil.wait_until(prepared, 45, interval=1, what="a prepared authority")
    p_id = seen["p"]
    assert p_id != b
    left = int(show(c)["active"]["expires_at"]) - time.time()
    assert left < 31, "prepared with %.0f s left" % left
    assert bundle_ids(c) == {b, p_id}
    assert bundle(c)["spiffe_sequence"] > STATE["seq"]

    def activated():
        s = show(c)
        return s.get("active", {}).get("authority_id") == p_id

    sigil.wait_until(activated, 30, interval=1, what="the prepared authority activated")
    s = show(c)
    assert s["old"]["authority_id"] == b, s
    assert int(s["old"]["expires_at"]) - time.time() < 11
    # The new active authority has a full life ahead of it.
    assert int(s["active"]["expires_at"]) - time.time() > 30
    log = c.server.log()
    assert "activated CA authority " + p_id in log, log[-3000:]
