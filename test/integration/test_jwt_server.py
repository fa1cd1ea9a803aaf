"""JWT-SVIDs on the server: signing keys, minting, the JWKS bundle, rotation.

One server (default_jwt_svid_ttl 4s, jwt_issuer set) and one agent. Tokens
are checked with python3-jwt against the JWKS that `bundle show -format
spiffe` prints, never with sigil's own code; minted X509-SVIDs with
`openssl verify`. Key rotation follows SPIRE's `localauthority jwt` steps:
 1. prepare a key, activate it; the old key stays in the JWKS
 2. taint the old key: agents learn it from the Sync stream
 3. revoke is refused while tokens it signed may be live, accepted after
"""

import json
import os
import queue
import stat
import threading
import time

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import sigil

NODE = "/sigil.node.v1.Node/"
WID = sigil.TD_ID + "/jwt/workload"
OTHER = sigil.TD_ID + "/jwt/other"
ISSUER = "https://oidc.example.org"
DEFAULT_TTL = 4


@pytest.fixture(scope="module")
def c(env):
    c = sigil.Cluster(env, "test_jwt_server")
    try:
        c.write_server_conf(extra_server='    default_jwt_svid_ttl = "%ds"\n    jwt_issuer = "%s"\n' % (DEFAULT_TTL, ISSUER))
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


@pytest.fixture(scope="module")
def node(c, env):
    """Entries and the agent's credentials for calling the node API as the agent."""
    agent = c.agents["agent"]
    mine = c.create_entry(WID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()], "-jwtSVIDTTL", "90")
    other = c.create_entry(OTHER, sigil.TD_ID + "/spire/agent/join_token/someone-else", ["unix:uid:0"])
    sigil.wait_for_svid(env.wl, agent.sock, WID)
    d = sigil.mkdir(os.path.join(c.dir, "node"), 0o700)
    cert, key, agent_id = sigil.find_agent_credentials(agent.data, d)
    assert agent_id == agent.spiffe_id
    return {"mine": mine, "other": other, "cert": cert, "key": key}


def jwks(c):
    p = c.server_cli("bundle show", "-format", "spiffe")
    assert p.returncode == 0, p.out
    return json.loads(p.stdout)


def jwt_keys(doc):
    return {k["kid"]: k for k in doc["keys"] if k.get("use") == "jwt-svid"}


def verify(c, token, audience, doc=None):
    """Decodes token with python3-jwt using the key its kid names in the server's JWKS."""
    header = jwt.get_unverified_header(token)
    keys = jwt_keys(doc or jwks(c))
    assert header["kid"] in keys, (header, list(keys))
    key = jwt.PyJWK(keys[header["kid"]], algorithm=header["alg"])
    return jwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience, issuer=ISSUER,
                      options={"require": ["sub", "aud", "exp", "iat"]})


def mint_jwt(c, *args):
    p = c.server_cli("jwt mint", *args)
    assert p.returncode == 0, p.out
    return p.stdout.strip()


def authorities(c):
    p = c.server_cli("localauthority jwt show", "-output", "json")
    assert p.returncode == 0, p.out
    return json.loads(p.stdout)["authorities"]


def kid_in(c, state):
    ids = [a["authority_id"] for a in authorities(c) if a["state"] == state]
    assert len(ids) == 1, (state, authorities(c))
    return ids[0]


# ---------------------------------------------------------------- node API helpers


def _node_call(c, node, method, req, resp_cls):
    b = sigil.NodeTLSBridge(c.port, c.bundle_path, node["cert"], node["key"])
    try:
        with b.channel() as ch:
            return ch.unary_unary(NODE + method, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=resp_cls.FromString)(req, timeout=10)
    finally:
        b.close()


# ---------------------------------------------------------------- rotation


def _open_sync(c, node, pb):
    """An open Sync stream; messages go to the returned queue."""
    b = sigil.NodeTLSBridge(c.port, c.bundle_path, node["cert"], node["key"])
    ch = b.channel()
    it = ch.unary_stream(NODE + "Sync", request_serializer=lambda m: m.SerializeToString(),
                         response_deserializer=pb.SyncResponse.FromString)(pb.SyncRequest(), timeout=120)
    q = queue.Queue()

    def pump():
        try:
            for m in it:
                q.put(m)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    return b, ch, it, q


def _next_where(q, pred, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if pred(m):
            return m
    raise AssertionError("no Sync message matched within %ds" % timeout)


def test_localauthority_jwt_prepare_activate_taint_revoke(c, node, env):
    pb = env.node
    b, ch, it, q = _open_sync(c, node, pb)
    try:
        first = q.get(timeout=10)
        kids0 = {k.kid for k in first.bundle.jwt_authorities}
        assert kids0 == set(jwt_keys(jwks(c))), kids0
        assert all(k.public_key and k.expires_at > time.time() for k in first.bundle.jwt_authorities)
        seq0 = first.bundle.sequence

        # 1. prepare B and activate it: tokens carry B's kid, A stays published.
        a_kid = kid_in(c, "active")
        p = c.server_cli("localauthority jwt prepare")
        assert p.returncode == 0 and "Prepared JWT authority:" in p.stdout, p.out
        b_kid = kid_in(c, "prepared")
        assert b_kid in p.stdout
        m = _next_where(q, lambda m: b_kid in {k.kid for k in m.bundle.jwt_authorities})
        assert m.bundle.sequence > seq0
        old_token = mint_jwt(c, "-spiffeID", WID, "-audience", "a")
        assert jwt.get_unverified_header(old_token)["kid"] == a_kid
        p = c.server_cli("localauthority jwt activate", "-authorityID", b_kid)
        assert p.returncode == 0 and "Activated JWT authority:" in p.stdout, p.out
        assert kid_in(c, "active") == b_kid and kid_in(c, "old") == a_kid
        new_token = mint_jwt(c, "-spiffeID", WID, "-audience", "a")
        assert jwt.get_unverified_header(new_token)["kid"] == b_kid
        assert verify(c, old_token, "a")["sub"] == WID
        show = c.server_cli("localauthority jwt show")
        assert "Active JWT authority:" in show.stdout and "Old JWT authority:" in show.stdout, show.out
        assert "No prepared JWT authority found" in show.stdout, show.out

        # 2. taint A: only an old key can be tainted; agents see it in Sync.
        p = c.server_cli("localauthority jwt taint", "-authorityID", b_kid)
        assert p.returncode == 1 and "only an old authority can be tainted" in p.stderr, p.out
        p = c.server_cli("localauthority jwt taint", "-authorityID", a_kid)
        assert p.returncode == 0 and "Tainted JWT authority:" in p.stdout, p.out
        m = _next_where(q, lambda m: a_kid in m.tainted_jwt_key_ids)
        assert list(m.tainted_jwt_key_ids) == [a_kid]
        assert [a["tainted"] for a in authorities(c) if a["authority_id"] == a_kid] == [True]

        # 3. revoke A once no token it signed can be live: A signed only
        #    default-TTL (4s) tokens, as this test runs before the long-TTL ones.
        p = c.server_cli("localauthority jwt revoke", "-authorityID", a_kid)
        assert p.returncode == 1 and "may still have live JWT-SVIDs until" in p.stderr, p.out

        def revoked():
            r = c.server_cli("localauthority jwt revoke", "-authorityID", a_kid)
            assert r.returncode == 0 or "may still have live" in r.stderr, r.out
            return r if r.returncode == 0 else None

        p = sigil.wait_until(revoked, 20, interval=0.5, what="revoke accepted")
        assert "Revoked JWT authority:" in p.stdout, p.out
        assert a_kid not in jwt_keys(jwks(c))
        m = _next_where(q, lambda m: a_kid not in {k.kid for k in m.bundle.jwt_authorities})
        assert list(m.tainted_jwt_key_ids) == []
        with pytest.raises(AssertionError):
            verify(c, old_token, "a")
    finally:
        it.cancel()
        ch.close()
        b.close()


# ---------------------------------------------------------------- jwt mint


def test_jwt_mint_verifies_against_the_spiffe_bundle(c):
    before = int(time.time())
    token = mint_jwt(c, "-spiffeID", WID, "-audience", "spiffe://example.org/db", "-audience", "other")
    doc = jwks(c)
    assert doc.get("spiffe_sequence", 0) > 0
    assert any(k.get("use") == "x509-svid" for k in doc["keys"])
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert set(header) <= {"alg", "kid", "typ"}, header
    claims = verify(c, token, "other", doc)
    assert claims["sub"] == WID
    assert claims["aud"] == ["spiffe://example.org/db", "other"]
    assert claims["iss"] == ISSUER
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == DEFAULT_TTL
    # One audience is written as a plain string, as SPIRE does.
    claims = verify(c, mint_jwt(c, "-spiffeID", WID, "-audience", "solo"), "solo")
    assert claims["aud"] in ("solo", ["solo"])
    with pytest.raises(jwt.InvalidAudienceError):
        verify(c, token, "someone-else", doc)


def test_jwt_mint_ttl_json_and_write(c):
    claims = verify(c, mint_jwt(c, "-spiffeID", WID, "-audience", "a", "-ttl", "90"), "a")
    assert claims["exp"] - claims["iat"] == 90
    claims = verify(c, mint_jwt(c, "-spiffeID", WID, "-audience", "a", "-ttl", "2m"), "a")
    assert claims["exp"] - claims["iat"] == 120
    out = json.loads(mint_jwt(c, "-spiffeID", WID, "-audience", "a", "-output", "json"))
    claims = verify(c, out["token"], "a")
    assert int(out["expires_at"]) == claims["exp"]
    path = os.path.join(c.dir, "token.jwt")
    p = c.server_cli("jwt mint", "-spiffeID", WID, "-audience", "a", "-write", path)
    assert p.returncode == 0, p.out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert verify(c, f.read().strip(), "a")["sub"] == WID


@pytest.mark.parametrize("args,want", [
    (["-spiffeID", WID], "at least one audience is required"),
    (["-audience", "a"], "a SPIFFE ID is required"),
    (["-spiffeID", WID, "-audience", ""], "audience 1 is empty"),
    (["-spiffeID", "spiffe://other.org/w", "-audience", "a"], 'is not in the trust domain "example.org"'),
    (["-spiffeID", sigil.TD_ID + "/spire/agent/x", "-audience", "a"], "is reserved"),
    (["-spiffeID", sigil.TD_ID, "-audience", "a"], "has no path"),
    (["-spiffeID", "http://example.org/w", "-audience", "a"], "invalid SPIFFE ID"),
    (["-spiffeID", WID, "-audience", "a", "-ttl", "soon"], 'invalid value "soon" for -ttl'),
    (["-spiffeID", WID, "-audience", "a", "-ttl", "0"], "must be at least 1s"),
    (["-spiffeID", WID, "-audience", "a", "-ttl", "-5s"], 'invalid value "-5s" for -ttl'),
    (["-spiffeID", WID] + ["-audience", "a"] * 33, "too many audiences: 33"),
    (["-spiffeID", WID, "-audience", "x" * 1025], "audience 1 is too long"),
])
def test_jwt_mint_bad_input(c, args, want):
    p = c.server_cli("jwt mint", *args)
    assert p.returncode == 1, p.out
    assert want in p.stderr, p.out
    assert c.server.alive()


# ---------------------------------------------------------------- x509 mint


def test_x509_mint_write_verifies_with_openssl(c):
    d = os.path.join(c.dir, "minted")
    p = c.server_cli("x509 mint", "-spiffeID", WID, "-dns", "svc.example.org", "-ttl", "10m", "-write", d)
    assert p.returncode == 0, p.out
    svid, key, bundle = (os.path.join(d, n) for n in ("svid.pem", "key.pem", "bundle.pem"))
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    r = sigil.openssl_verify(bundle, svid)
    assert r.returncode == 0 and ": OK" in r.stdout, r.out
    with open(svid, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    with open(key, "rb") as f:
        priv = serialization.load_pem_private_key(f.read(), None)
    assert sigil.uri_sans(leaf) == [WID]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["svc.example.org"]
    life = (leaf.not_valid_after - leaf.not_valid_before).total_seconds()
    assert 600 <= life <= 620, life
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    assert priv.public_key().public_bytes(serialization.Encoding.DER, pub) == leaf.public_key().public_bytes(serialization.Encoding.DER, pub)


def test_x509_mint_prints_pem_or_json(c):
    p = c.server_cli("x509 mint", "-spiffeID", WID)
    assert p.returncode == 0, p.out
    assert "X509-SVID:" in p.stdout and "Private key:" in p.stdout and "Root CAs:" in p.stdout, p.out
    assert "BEGIN PRIVATE KEY" in p.stdout
    out = json.loads(c.server_cli("x509 mint", "-spiffeID", WID, "-output", "json").stdout)
    leaf = x509.load_pem_x509_certificate(out["x509_svid"].encode())
    assert sigil.uri_sans(leaf) == [WID]
    assert "BEGIN CERTIFICATE" in out["root_cas"]
    life = (leaf.not_valid_after - leaf.not_valid_before).total_seconds()
    assert 3600 <= life <= 3620, life  # default_x509_svid_ttl


@pytest.mark.parametrize("args,want", [
    ([], "a SPIFFE ID is required"),
    (["-spiffeID", "spiffe://other.org/w"], 'is not in the trust domain "example.org"'),
    (["-spiffeID", sigil.SERVER_ID], "is reserved"),
    (["-spiffeID", WID, "-ttl", "1y"], 'invalid value "1y" for -ttl'),
    (["-spiffeID", WID, "-dns", "bad name"], 'DNS name "bad name" is not valid'),
])
def test_x509_mint_bad_input(c, args, want):
    p = c.server_cli("x509 mint", *args)
    assert p.returncode == 1, p.out
    assert want in p.stderr, p.out
    assert c.server.alive()


# ---------------------------------------------------------------- node API and agent


def test_node_mint_jwt_for_authorised_entries_only(c, node, env):
    pb = env.node
    resp = _node_call(c, node, "MintJWTSVID", pb.MintJWTSVIDRequest(entry_id=node["mine"], audience=["db"]),
                      pb.MintJWTSVIDResponse)
    claims = verify(c, resp.svid.token, "db")
    assert claims["sub"] == WID == resp.svid.spiffe_id
    assert claims["exp"] - claims["iat"] == 90  # the entry's jwt_svid_ttl
    assert resp.svid.expires_at == claims["exp"] and resp.svid.issued_at == claims["iat"]
    assert resp.svid.kid == jwt.get_unverified_header(resp.svid.token)["kid"]
    for req, code, want in [
        (pb.MintJWTSVIDRequest(entry_id=node["other"], audience=["db"]), grpc.StatusCode.PERMISSION_DENIED, "not authorised"),
        (pb.MintJWTSVIDRequest(entry_id="no-such-entry", audience=["db"]), grpc.StatusCode.PERMISSION_DENIED, "not authorised"),
        (pb.MintJWTSVIDRequest(entry_id=node["mine"]), grpc.StatusCode.INVALID_ARGUMENT, "at least one audience"),
        (pb.MintJWTSVIDRequest(entry_id=node["mine"], audience=["db", ""]), grpc.StatusCode.INVALID_ARGUMENT, "audience 2 is empty"),
    ]:
        with pytest.raises(grpc.RpcError) as ei:
            _node_call(c, node, "MintJWTSVID", req, pb.MintJWTSVIDResponse)
        assert ei.value.code() == code, (ei.value.code(), ei.value.details())
        assert want in ei.value.details()


def test_agent_fetches_a_jwt_svid_the_server_signed(c, node):
    agent = c.agents["agent"]

    def fetch():
        p = agent.cli("api fetch jwt", "-audience", "web")
        return p if p.returncode == 0 else None

    p = sigil.wait_until(fetch, 20, what="sigil-agent api fetch jwt")
    tokens = [w for w in p.stdout.split() if w.count(".") == 2 and w.startswith("ey")]
    assert tokens, p.out
    assert verify(c, tokens[0], "web")["sub"] == WID


@pytest.mark.parametrize("sub,args,want", [
    ("activate", [], "an authority ID is required (-authorityID)"),
    ("activate", ["-authorityID", "AAAA"], "no JWT authority with ID AAAA"),
    ("activate", ["-authorityID", "../x"], 'authority ID "../x" is not valid'),
    ("taint", ["-authorityID", "nope"], "no JWT authority with ID nope"),
    ("revoke", ["-authorityID", "nope"], "no JWT authority with ID nope"),
])
def test_localauthority_jwt_bad_input(c, sub, args, want):
    p = c.server_cli("localauthority jwt " + sub, *args)
    assert p.returncode == 1, p.out
    assert want in p.stderr, p.out
    assert c.server.alive()


def test_jwt_keys_survive_a_restart(c):
    before = {a["authority_id"]: a["state"] for a in authorities(c)}
    token = mint_jwt(c, "-spiffeID", WID, "-audience", "a", "-ttl", "5m")
    seq = jwks(c)["spiffe_sequence"]
    c.stop_server()
    c.start_server()
    assert {a["authority_id"]: a["state"] for a in authorities(c)} == before
    assert verify(c, token, "a")["sub"] == WID
    assert jwks(c)["spiffe_sequence"] >= seq


# ---------------------------------------------------------------- key types and config


def test_ps256_server_tokens_verify(env):
    """jwt_key_type PS256: an RSA key, RSASSA-PSS signatures, the RSA JWK in the bundle."""
    c2 = sigil.Cluster(env, "test_jwt_server_ps256")
    try:
        c2.write_server_conf(extra_server='    jwt_key_type = "PS256"\n    jwt_issuer = "%s"\n' % ISSUER)
        c2.start_server()
        token = mint_jwt(c2, "-spiffeID", WID, "-audience", "a")
        assert jwt.get_unverified_header(token)["alg"] == "PS256"
        key = jwt_keys(jwks(c2))[jwt.get_unverified_header(token)["kid"]]
        assert key["kty"] == "RSA", key
        assert verify(c2, token, "a")["sub"] == WID
    finally:
        sigil.stop_cluster(c2)


@pytest.mark.parametrize("line,want", [
    ('jwt_key_type = "HS256"', ':9: jwt_key_type: invalid jwt_key_type "HS256"'),
    ('default_jwt_svid_ttl = "forever"', ":9: default_jwt_svid_ttl:"),
    ('default_jwt_svid_ttl = "48h"', ":9: default_jwt_svid_ttl (172800s) must be shorter than ca_ttl (86400s)"),
    ('jwt_issuer = ""', ":9: jwt_issuer must not be empty"),
])
def test_jwt_config_errors_name_file_and_line(env, line, want):
    c2 = sigil.Cluster(env, "test_jwt_server_badconf")
    path = c2.write_server_conf(extra_server="    %s\n" % line)
    p = sigil.run([sigil.SERVER_BIN, "validate", "-config", path])
    assert p.returncode == 1, p.out
    assert path + want in p.out, p.out
