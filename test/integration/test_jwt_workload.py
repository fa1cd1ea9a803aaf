"""JWT-SVIDs over the Workload API, as a standard SPIFFE client sees them.

Every JWT RPC through grpcio stubs generated from the official proto;
tokens from FetchJWTSVID verified independently with python3-jwt and
python3-cryptography against the JWKS from FetchJWTBundles; every way a
token can be wrong is InvalidArgument from ValidateJWTSVID; federated
bundles reach the X.509 and JWT messages and open streams.
"""

import base64
import json
import os
import re
import subprocess
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sigil

ID_A = sigil.TD_ID + "/jwt/a"
ID_B = sigil.TD_ID + "/jwt/b"
AUD = "spiffe://example.org/jwt-audience"
FOREIGN_TD = "other.test"
FOREIGN = "spiffe://" + FOREIGN_TD
NOBODY_UID = 65534


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def fetch_jwt(w, audience, spiffe_id="", metadata=sigil.HEADER):
    return w.call("FetchJWTSVID", w.pb.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id), metadata=metadata,
                  timeout=15)


def validate(w, audience, token, metadata=sigil.HEADER):
    return w.call("ValidateJWTSVID", w.pb.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=metadata)


def jwks_of(resp, td_id):
    assert td_id in resp.bundles, "no JWT bundle for %s in %r" % (td_id, list(resp.bundles))
    return json.loads(resp.bundles[td_id])


def public_key_for(jwks, kid):
    for k in jwks.get("keys", []):
        if k.get("kid") == kid:
            return jwt.PyJWK(k).key
    raise AssertionError("kid %s not in JWKS %r" % (kid, jwks))


@pytest.fixture(scope="module")
def jwt_agent(cluster, agent, env):
    uid = "unix:uid:%d" % os.getuid()
    cluster.create_entry(ID_A, agent.spiffe_id, [uid])
    cluster.create_entry(ID_B, agent.spiffe_id, [uid])
    sigil.wait_for_svid(env.wl, agent.sock, ID_A)
    sigil.wait_for_svid(env.wl, agent.sock, ID_B)
    with sigil.Workload(env.wl, agent.sock) as w:
        code, details, _ = fetch_jwt(w, [AUD])
    assert code == grpc.StatusCode.OK, (code, details)
    # The agent learns the JWT authorities from Sync.
    def has_keys():
        with sigil.Workload(env.wl, agent.sock) as w2:
            c, _, r = w2.call("FetchJWTBundles")
        return c == grpc.StatusCode.OK and jwks_of(r, sigil.TD_ID).get("keys")
    sigil.wait_until(has_keys, 20, what="JWT authorities in FetchJWTBundles")
    return agent


@pytest.fixture(scope="module")
def good_token(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = fetch_jwt(w, [AUD], ID_A)
    assert code == grpc.StatusCode.OK, (code, details)
    return resp.svids[0].svid


# ---------------------------------------------------------------- FetchJWTSVID


def test_jwt_fetch_all_identities_verified_independently(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = fetch_jwt(w, [AUD, "second-audience"])
        assert code == grpc.StatusCode.OK, (code, details)
        code, details, bundles = w.call("FetchJWTBundles")
        assert code == grpc.StatusCode.OK, (code, details)
    assert sorted(s.spiffe_id for s in resp.svids) == [ID_A, ID_B]
    jwks = jwks_of(bundles, sigil.TD_ID)
    for k in jwks["keys"]:
        assert k.get("use") in (None, "jwt-svid"), k
        assert "x5c" not in k, "FetchJWTBundles carries jwt-svid keys only: %r" % k
    now = time.time()
    for s in resp.svids:
        header = jwt.get_unverified_header(s.svid)
        assert set(header) <= {"alg", "kid", "typ"}, header
        assert header["alg"] in ("ES256", "ES384", "RS256", "PS256"), header
        key = public_key_for(jwks, header["kid"])
        claims = jwt.decode(s.svid, key, algorithms=[header["alg"]], audience=AUD)
        assert claims["sub"] == s.spiffe_id
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        assert sorted(aud) == sorted([AUD, "second-audience"])
        assert now - 60 < claims["iat"] <= now + 5
        assert claims["exp"] > now
        assert set(claims) <= {"sub", "aud", "exp", "iat", "iss"}, claims


def test_jwt_fetch_one_identity_by_spiffe_id(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = fetch_jwt(w, [AUD], ID_B)
    assert code == grpc.StatusCode.OK, (code, details)
    assert [s.spiffe_id for s in resp.svids] == [ID_B]
    assert jwt.decode(resp.svids[0].svid, options={"verify_signature": False})["sub"] == ID_B


def test_jwt_fetch_cached_per_audience_set(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        t1 = fetch_jwt(w, ["x-aud", "y-aud"], ID_A)[2].svids[0].svid
        t2 = fetch_jwt(w, ["y-aud", "x-aud", "x-aud"], ID_A)[2].svids[0].svid
        t3 = fetch_jwt(w, ["x-aud"], ID_A)[2].svids[0].svid
    assert t1 == t2, "the same audience set must be served from the cache"
    assert t3 != t1
    assert jwt.decode(t3, options={"verify_signature": False})["aud"] in ("x-aud", ["x-aud"])


def test_jwt_fetch_concurrent_cold_requests_share_one_token(jwt_agent, env):
    import threading

    aud = ["burst-%d" % os.getpid(), "burst-b"]
    out = []

    def one(i):
        with sigil.Workload(env.wl, jwt_agent.sock) as w:
            code, details, resp = fetch_jwt(w, aud if i % 2 else list(reversed(aud)), ID_A)
        out.append((code, details, resp.svids[0].svid if resp else None))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == 24
    assert all(c == grpc.StatusCode.OK for c, _, _ in out), out
    assert len({tok for _, _, tok in out}) == 1, "one server call per (entry, audience set)"


def test_jwt_fetch_identity_not_held_permission_denied(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = fetch_jwt(w, [AUD], sigil.TD_ID + "/not/mine")
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)


@pytest.mark.parametrize("audience,spiffe_id", [
    ([], ""),
    ([""], ""),
    ([AUD, ""], ""),
    ([AUD], "not a spiffe id"),
    ([AUD], "spiffe://UPPER.example/x"),
    (["a" * 5000], ""),
], ids=["no-audience", "empty-audience", "one-empty", "bad-id", "bad-td", "huge-audience"])
def test_jwt_fetch_bad_requests_invalid_argument(jwt_agent, env, audience, spiffe_id):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = fetch_jwt(w, audience, spiffe_id)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details


@pytest.mark.parametrize("method", ["FetchJWTSVID", "FetchJWTBundles", "ValidateJWTSVID"])
def test_jwt_security_header_missing_invalid_argument(jwt_agent, env, method):
    reqs = {
        "FetchJWTSVID": env.wl.JWTSVIDRequest(audience=[AUD]),
        "FetchJWTBundles": env.wl.JWTBundlesRequest(),
        "ValidateJWTSVID": env.wl.ValidateJWTSVIDRequest(audience=AUD, svid="a.b.c"),
    }
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = w.call(method, reqs[method], metadata=())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "security header" in details


CHILD = r"""
import importlib.util, json, os, sys
import grpc
pydir, sock, aud = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("wl", os.path.join(pydir, "spiffe/workload_pb2.py"))
wl = importlib.util.module_from_spec(spec); spec.loader.exec_module(wl)
ch = grpc.insecure_channel("unix:" + sock)
md = (("workload.spiffe.io", "true"),)
out = {}
try:
    ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wl.JWTSVIDResponse.FromString)(wl.JWTSVIDRequest(audience=[aud]), metadata=md, timeout=5)
    out["FetchJWTSVID"] = "OK"
except grpc.RpcError as e:
    out["FetchJWTSVID"] = e.code().name
try:
    it = ch.unary_stream("/SpiffeWorkloadAPI/FetchJWTBundles", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wl.JWTBundlesResponse.FromString)(wl.JWTBundlesRequest(), metadata=md, timeout=5)
    next(it)
    out["FetchJWTBundles"] = "OK"
except grpc.RpcError as e:
    out["FetchJWTBundles"] = e.code().name
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a workload under another uid")
def test_jwt_no_identity_permission_denied(jwt_agent, env):
    script = os.path.join(env.base, "child_jwt_no_identity.py")
    with open(script, "w") as f:
        f.write(CHILD)
    os.chmod(script, 0o644)
    p = subprocess.run([sigil.PYTHON, script, env.pydir, jwt_agent.sock, AUD], user=NOBODY_UID, group=NOBODY_UID,
                       extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout)
    assert out == {"FetchJWTSVID": "PERMISSION_DENIED", "FetchJWTBundles": "PERMISSION_DENIED"}, out


# ---------------------------------------------------------------- ValidateJWTSVID


def test_jwt_validate_good_token(jwt_agent, env, good_token):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = validate(w, AUD, good_token)
    assert code == grpc.StatusCode.OK, (code, details)
    assert resp.spiffe_id == ID_A
    claims = json.loads(json.dumps(dict(resp.claims)))
    assert claims["sub"] == ID_A
    assert claims["aud"] in (AUD, [AUD])
    assert claims["exp"] > time.time()


def _sign(header, claims, key, alg):
    """A compact JWS signed with a key of our own (python3-jwt does the signing)."""
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def _resign_raw(header, payload, sig=b""):
    return "%s.%s.%s" % (b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(sig))


def _bad_tokens(good, expired):
    h_b64, p_b64, s_b64 = good.split(".")
    header = json.loads(unb64url(h_b64))
    claims = json.loads(unb64url(p_b64))
    now = int(time.time())
    own_key = ec.generate_private_key(ec.SECP256R1())

    tampered_claims = dict(claims, sub=ID_B)
    flipped = s_b64[:-2] + ("A" if s_b64[-2] != "A" else "B") + s_b64[-1]
    foreign_claims = dict(claims, sub=FOREIGN + "/w", iat=now, exp=now + 300)
    hs_secret = b"any-secret-the-attacker-picks"
    return {
        "wrong-audience": (good, "some-other-audience"),
        "expired": (expired, AUD),
        "alg-none": (_resign_raw(dict(header, alg="none"), claims), AUD),
        "hs256": (jwt.encode(claims, hs_secret, algorithm="HS256", headers={"kid": header["kid"]}), AUD),
        "tampered-payload": ("%s.%s.%s" % (h_b64, b64url(json.dumps(tampered_claims).encode()), s_b64), AUD),
        "tampered-signature": ("%s.%s.%s" % (h_b64, p_b64, flipped), AUD),
        "unknown-kid": (_sign({"kid": "not-a-known-kid", "typ": "JWT"}, claims, own_key, "ES256"), AUD),
        "extra-header": (_sign({"kid": header["kid"], "typ": "JWT", "x5u": "https://evil.test/k"}, claims, own_key,
                               "ES256"), AUD),
        "unfederated-trust-domain": (_sign({"kid": "foreign-kid", "typ": "JWT"}, foreign_claims, own_key, "ES256"),
                                     AUD),
        "garbage": ("garbage", AUD),
        "three-garbage-parts": ("a.b.c", AUD),
        "json-serialization": (json.dumps({"payload": p_b64, "signature": s_b64}), AUD),
        "five-parts": (good + ".x.y", AUD),
    }


BAD_CASES = ["wrong-audience", "expired", "alg-none", "hs256", "tampered-payload", "tampered-signature",
             "unknown-kid", "extra-header", "unfederated-trust-domain", "garbage", "three-garbage-parts",
             "json-serialization", "five-parts"]


@pytest.fixture(scope="module")
def expired_token(jwt_agent, cluster):
    p = cluster.server_cli("jwt mint", "-spiffeID", ID_A, "-audience", AUD, "-ttl", "1s")
    assert p.returncode == 0, p.out
    m = re.search(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", p.stdout)
    assert m, p.out
    exp = jwt.decode(m.group(0), options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.5)
    return m.group(0)


@pytest.mark.parametrize("case", BAD_CASES)
def test_jwt_validate_bad_token_invalid_argument(jwt_agent, env, good_token, expired_token, case):
    token, aud = _bad_tokens(good_token, expired_token)[case]
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = validate(w, aud, token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, code, details)
    assert details, case
    assert good_token not in details, "the error must not echo the token"
    assert jwt_agent.daemon.alive()


@pytest.mark.parametrize("audience,svid", [("", "a.b.c"), (AUD, "")], ids=["no-audience", "no-svid"])
def test_jwt_validate_missing_fields_invalid_argument(jwt_agent, env, audience, svid):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = validate(w, audience, svid)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "must be specified" in details


def test_jwt_validate_huge_token_invalid_argument(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, _ = validate(w, AUD, "a" * 100000 + ".b.c")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


# ---------------------------------------------------------------- FetchJWTBundles stream, CLI


def test_jwt_bundles_stream_first_message(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = w.call("FetchJWTBundles")
    assert code == grpc.StatusCode.OK, (code, details)
    jwks = jwks_of(resp, sigil.TD_ID)
    assert all(k.get("kid") for k in jwks["keys"])


def test_jwt_cli_fetch_and_validate(jwt_agent):
    p = jwt_agent.cli("api fetch jwt", "-audience", AUD, "-spiffeID", ID_A)
    assert p.returncode == 0, p.out
    assert "token(%s):" % ID_A in p.stdout
    assert "bundle(%s):" % sigil.TD_ID in p.stdout
    token = re.search(r"token\(%s\):\s+(\S+)" % re.escape(ID_A), p.stdout).group(1)
    # Scripts written for spire-agent take the token from the second line (`sed -n 2p`).
    assert p.stdout.splitlines()[1] == "\t" + token
    p = jwt_agent.cli("api validate jwt", "-audience", AUD, "-svid", token)
    assert p.returncode == 0, p.out
    assert "SVID is valid." in p.stdout and ID_A in p.stdout
    p = jwt_agent.cli("api validate jwt", "-audience", "other", "-svid", token)
    assert p.returncode == 1
    assert "InvalidArgument" in p.stderr, p.out
    p = jwt_agent.cli("api fetch jwt", "-audience", AUD, "-output", "json")
    assert p.returncode == 0, p.out
    out = json.loads(p.stdout)
    assert sorted(s["spiffe_id"] for s in out[0]["svids"]) == [ID_A, ID_B]
    assert sigil.TD_ID in out[1]["bundles"]
    json.loads(base64.b64decode(out[1]["bundles"][sigil.TD_ID]))
    p = jwt_agent.cli("api fetch jwt")
    assert p.returncode == 1 and "audience" in p.stderr


# ---------------------------------------------------------------- federation


def _foreign_bundle_json(ca_pem_path, jwt_key, kid, seq):
    from cryptography import x509 as cx509

    with open(ca_pem_path, "rb") as f:
        ca = cx509.load_pem_x509_certificate(f.read())
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    ca_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ca.public_key()))
    ca_jwk.update({"use": "x509-svid", "x5c": [base64.b64encode(ca_der).decode()]})
    jk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(jwt_key.public_key()))
    jk.update({"use": "jwt-svid", "kid": kid})
    return json.dumps({"keys": [ca_jwk, jk], "spiffe_sequence": seq}), ca_der


@pytest.fixture(scope="module")
def federated(jwt_agent, cluster, env):
    probe = cluster.server_cli("bundle set", "-id", FOREIGN, "-path", "/nonexistent")
    if 'unknown subcommand "bundle set"' in probe.out:
        pytest.skip("this sigil-server has no `bundle set` yet")
    ca_pem, _, _ = sigil.make_foreign_ca(cluster.dir, uri=FOREIGN + "/w")
    key = ec.generate_private_key(ec.SECP256R1())
    text, ca_der = _foreign_bundle_json(ca_pem, key, "foreign-kid-1", 1)
    path = os.path.join(cluster.dir, "foreign-bundle.json")
    with open(path, "w") as f:
        f.write(text)
    p = cluster.server_cli("bundle set", "-id", FOREIGN, "-path", path, "-format", "spiffe")
    assert p.returncode == 0, p.out
    fed_id = sigil.TD_ID + "/jwt/fed"
    cluster.create_entry(fed_id, jwt_agent.spiffe_id, ["unix:uid:%d" % os.getuid(), "unix:gid:%d" % os.getgid()],
                         "-federatesWith", FOREIGN)
    sigil.wait_for_svid(env.wl, jwt_agent.sock, fed_id)
    return {"ca_pem": ca_pem, "ca_der": ca_der, "key": key, "path": path, "id": fed_id}


def test_jwt_federated_bundles_in_every_message(jwt_agent, env, federated):
    def fed_in_x509():
        with sigil.Workload(env.wl, jwt_agent.sock) as w:
            code, _, resp = w.call("FetchX509SVID")
        return code == grpc.StatusCode.OK and FOREIGN in resp.federated_bundles and resp

    resp = sigil.wait_until(fed_in_x509, 20, what="federated bundle in FetchX509SVID")
    assert resp.federated_bundles[FOREIGN] == federated["ca_der"]
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, xb = w.call("FetchX509Bundles")
        assert code == grpc.StatusCode.OK, (code, details)
        assert xb.bundles[FOREIGN] == federated["ca_der"]
        assert sigil.TD_ID in xb.bundles
        code, details, jb = w.call("FetchJWTBundles")
        assert code == grpc.StatusCode.OK, (code, details)
        assert [k["kid"] for k in jwks_of(jb, FOREIGN)["keys"]] == ["foreign-kid-1"]
        # A token of the federated trust domain now validates.
        now = int(time.time())
        nested = {"y": [1, "a", True, None, 1.5, {"z": "deep"}], "n": 7}
        token = _sign({"kid": "foreign-kid-1", "typ": "JWT"},
                      {"sub": FOREIGN + "/w", "aud": AUD, "iat": now, "exp": now + 300, "x": nested},
                      federated["key"], "ES256")
        code, details, v = validate(w, AUD, token)
        assert code == grpc.StatusCode.OK, (code, details)
        assert v.spiffe_id == FOREIGN + "/w"
        # Every claim comes back in the Struct, nesting and types kept.
        from google.protobuf.json_format import MessageToDict
        claims = MessageToDict(v.claims)
        assert claims["x"] == {"y": [1.0, "a", True, None, 1.5, {"z": "deep"}], "n": 7.0}, claims
        assert claims["sub"] == FOREIGN + "/w" and claims["exp"] == now + 300


def test_jwt_cli_fetch_x509_writes_federated_bundles(jwt_agent, federated, tmp_path):
    p = jwt_agent.cli("api fetch x509", "-write", str(tmp_path))
    assert p.returncode == 0, p.out
    names = sorted(os.listdir(tmp_path))
    fed = [n for n in names if n.startswith("federated_bundle.")]
    assert fed, names
    assert all(re.fullmatch(r"federated_bundle\.\d+\.\d+\.pem", n) for n in fed), fed
    with open(os.path.join(tmp_path, fed[0])) as f:
        assert "BEGIN CERTIFICATE" in f.read()


def test_jwt_foreign_bundle_update_reaches_open_streams(jwt_agent, cluster, env, federated):
    """A new foreign CA and JWT key reach open FetchJWTBundles, FetchX509SVID and FetchX509Bundles."""
    ch = grpc.insecure_channel("unix:" + jwt_agent.sock)
    ser = lambda m: m.SerializeToString()  # noqa: E731
    jb = ch.unary_stream("/SpiffeWorkloadAPI/FetchJWTBundles", request_serializer=ser,
                         response_deserializer=env.wl.JWTBundlesResponse.FromString)(
        env.wl.JWTBundlesRequest(), metadata=sigil.HEADER, timeout=30)
    xs = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", request_serializer=ser,
                         response_deserializer=env.wl.X509SVIDResponse.FromString)(
        env.wl.X509SVIDRequest(), metadata=sigil.HEADER, timeout=30)
    xb = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509Bundles", request_serializer=ser,
                         response_deserializer=env.wl.X509BundlesResponse.FromString)(
        env.wl.X509BundlesRequest(), metadata=sigil.HEADER, timeout=30)
    try:
        assert FOREIGN in next(jb).bundles
        assert FOREIGN in next(xs).federated_bundles
        assert FOREIGN in next(xb).bundles
        new_dir = sigil.mkdir(os.path.join(cluster.dir, "foreign2"))
        ca2, _, _ = sigil.make_foreign_ca(new_dir, uri=FOREIGN + "/w")
        key2 = ec.generate_private_key(ec.SECP256R1())
        text, ca2_der = _foreign_bundle_json(ca2, key2, "foreign-kid-2", 2)
        with open(federated["path"], "w") as f:
            f.write(text)
        p = cluster.server_cli("bundle set", "-id", FOREIGN, "-path", federated["path"], "-format", "spiffe")
        assert p.returncode == 0, p.out
        for msg in jb:
            if [k["kid"] for k in jwks_of(msg, FOREIGN)["keys"]] == ["foreign-kid-2"]:
                break
        for msg in xs:
            if msg.federated_bundles.get(FOREIGN) == ca2_der:
                break
        for msg in xb:
            if msg.bundles.get(FOREIGN) == ca2_der:
                assert sigil.TD_ID in msg.bundles
                break
    finally:
        jb.cancel()
        xs.cancel()
        xb.cancel()
        ch.close()


def test_jwt_agent_still_serves(jwt_agent, env):
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = fetch_jwt(w, [AUD])
    assert code == grpc.StatusCode.OK, (code, details)
    assert jwt_agent.daemon.alive()


def test_jwt_tainted_key_tokens_dropped(jwt_agent, cluster, env):
    """Taint the JWT authority that signed a cached token: the agent stops serving it."""
    aud = ["taint-audience"]
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, resp = fetch_jwt(w, aud, ID_A)
        assert code == grpc.StatusCode.OK, (code, details)
    old = resp.svids[0].svid
    old_kid = jwt.get_unverified_header(old)["kid"]
    p = cluster.server_cli("localauthority jwt prepare")
    assert p.returncode == 0, p.out
    new_kid = re.search(r"Authority ID:\s*(\S+)", p.stdout).group(1)
    p = cluster.server_cli("localauthority jwt activate", "-authorityID", new_kid)
    assert p.returncode == 0, p.out
    p = cluster.server_cli("localauthority jwt taint", "-authorityID", old_kid)
    assert p.returncode == 0, p.out

    def reminted():
        with sigil.Workload(env.wl, jwt_agent.sock) as w2:
            c, _, r = fetch_jwt(w2, aud, ID_A)
        return c == grpc.StatusCode.OK and r.svids[0].svid != old and r.svids[0].svid

    token = sigil.wait_until(reminted, 20, what="a JWT-SVID not signed by the tainted key")
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, b = w.call("FetchJWTBundles")
        assert code == grpc.StatusCode.OK, (code, details)
        assert new_kid in [k["kid"] for k in jwks_of(b, sigil.TD_ID)["keys"]]
        code, details, v = validate(w, aud[0], token)
        assert code == grpc.StatusCode.OK, (code, details)


def test_jwt_server_unreachable(jwt_agent, cluster, env):
    """Cached tokens keep being served; a cold audience is Unavailable."""
    with sigil.Workload(env.wl, jwt_agent.sock) as w:
        code, details, warm = fetch_jwt(w, ["warm-audience"], ID_A)
        assert code == grpc.StatusCode.OK, (code, details)
    cluster.stop_server()
    try:
        with sigil.Workload(env.wl, jwt_agent.sock) as w:
            code, details, _ = fetch_jwt(w, ["cold-audience-%d" % os.getpid()], ID_A)
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            code, details, resp = fetch_jwt(w, ["warm-audience"], ID_A)
            assert code == grpc.StatusCode.OK, (code, details)
            assert resp.svids[0].svid == warm.svids[0].svid
            # The loop was never blocked: X.509 is served meanwhile.
            assert ID_A in [s.spiffe_id for s in w.x509().svids]
    finally:
        cluster.start_server()
    assert jwt_agent.daemon.alive()
