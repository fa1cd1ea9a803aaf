"""End to end: register a workload, fetch its X509-SVID, check every X509-SVID rule."""

import os
import stat

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

import sigil


NODE_ALIAS = sigil.TD_ID + "/agent-node"
WORKLOAD_ID = sigil.TD_ID + "/e2e/workload"
DIRECT_ID = sigil.TD_ID + "/e2e/direct"


@pytest.fixture(scope="module")
def c(env):
    """Server, then `token generate -spiffeID <alias>`, then an agent using that token."""
    c = sigil.Cluster(env, "e2e")
    try:
        c.start_server()
        c.write_bundle()
        tok = c.token(spiffe_id=NODE_ALIAS)
        c.start_agent("agent", token=tok)
        c.create_entry(WORKLOAD_ID, NODE_ALIAS, ["unix:uid:%d" % os.getuid()])
        c.create_entry(DIRECT_ID, c.agents["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


@pytest.fixture(scope="module")
def svid(c, env):
    return sigil.wait_for_svid(env.wl, c.agents["agent"].sock, WORKLOAD_ID)


def test_token_with_spiffe_id_registers_node_alias(c):
    entries = sigil.find_entries(c.entries_json())
    alias = [e for e in entries if sigil.id_str(e.get("spiffe_id")) == NODE_ALIAS]
    assert len(alias) == 1, entries
    assert sigil.id_str(alias[0]["parent_id"]) == c.agents["agent"].spiffe_id


def test_entry_parented_to_agent_id_is_served(c, env):
    s = sigil.wait_for_svid(env.wl, c.agents["agent"].sock, DIRECT_ID)
    assert s.spiffe_id == DIRECT_ID


def test_x509svid_has_exactly_one_uri_san_equal_to_entry(svid):
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    assert sigil.uri_sans(leaf) == [WORKLOAD_ID]


def test_x509svid_leaf_is_not_ca(svid):
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False


def test_x509svid_key_usage_critical_digital_signature_only(svid):
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.crl_sign


def test_x509svid_eku_server_and_client_auth(svid):
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_x509svid_validity_backdated_and_ttl_about_1h(svid):
    import datetime

    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    now = datetime.datetime.utcnow()
    assert leaf.not_valid_before <= now
    life = leaf.not_valid_after - leaf.not_valid_before
    assert datetime.timedelta(minutes=55) <= life <= datetime.timedelta(minutes=70), life


def test_x509svid_private_key_is_pkcs8_and_matches_cert(svid):
    key = serialization.load_der_private_key(svid.x509_svid_key, None)
    # PKCS#8: re-encoding as PKCS#8 DER gives the same bytes back.
    assert key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) == svid.x509_svid_key
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


def test_x509svid_chain_verifies_to_bundle(svid, c):
    d = sigil.mkdir(os.path.join(c.dir, "verify"))
    p = sigil.write_svid(svid, d, "w")
    r = sigil.openssl_verify(p["bundle"], p["leaf"], p["chain"])
    assert r.returncode == 0 and ": OK" in r.stdout, r.out
    # The Workload API bundle is the server's bundle.
    assert sigil.pem_ders(open(p["bundle"]).read()) == sigil.pem_ders(c.bundle_pem())


def test_bundle_ca_certs_are_ca_without_eku(svid):
    for der in sigil.split_der_certs(svid.bundle):
        ca = x509.load_der_x509_certificate(der)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
        ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign
        with pytest.raises(x509.ExtensionNotFound):
            ca.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_fetch_x509_bundles_maps_trust_domain_to_der(c, env, svid):
    with sigil.Workload(env.wl, c.agents["agent"].sock) as w:
        code, details, resp = w.call("FetchX509Bundles")
    assert code == grpc.StatusCode.OK, details
    assert dict(resp.bundles) == {sigil.TD_ID: svid.bundle}
    assert sigil.split_der_certs(resp.bundles[sigil.TD_ID]) == sigil.pem_ders(c.bundle_pem())


def test_cli_fetch_x509_write_files_verify(c, svid):
    a = c.agents["agent"]
    out = os.path.join(c.dir, "fetched", "sub")  # -write creates missing dirs
    r = a.cli("api fetch x509", "-write", out)
    assert r.returncode == 0, r.out
    assert WORKLOAD_ID in r.stdout
    names = sorted(os.listdir(out))
    for f in ("svid.0.pem", "svid.0.key", "bundle.0.pem"):
        assert f in names, names
    mode = stat.S_IMODE(os.stat(os.path.join(out, "svid.0.key")).st_mode)
    assert mode == 0o600, oct(mode)
    certs = sigil.pem_blocks(open(os.path.join(out, "svid.0.pem")).read())
    leaf = os.path.join(out, "leaf.check.pem")
    rest = os.path.join(out, "rest.check.pem")
    with open(leaf, "w") as f:
        f.write(certs[0] + "\n")
    with open(rest, "w") as f:
        f.write("\n".join(certs[1:]) + ("\n" if certs[1:] else ""))
    v = sigil.openssl_verify(os.path.join(out, "bundle.0.pem"), leaf, rest)
    assert v.returncode == 0, v.out
    # The key file holds the key of the certificate.
    k = serialization.load_pem_private_key(open(os.path.join(out, "svid.0.key"), "rb").read(), None)
    cert = x509.load_pem_x509_certificate(certs[0].encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert k.public_key().public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


def test_cli_fetch_honours_spiffe_endpoint_socket(c, svid):
    a = c.agents["agent"]
    env = dict(os.environ, SPIFFE_ENDPOINT_SOCKET="unix://" + a.sock)
    r = sigil.run([sigil.AGENT_BIN, "api", "fetch", "x509"], env=env)
    assert r.returncode == 0, r.out
    assert WORKLOAD_ID in r.stdout


def test_workload_socket_is_world_connectable(c):
    mode = stat.S_IMODE(os.stat(c.agents["agent"].sock).st_mode)
    assert mode == 0o777, oct(mode)


def test_stream_sends_update_when_entry_added_and_deleted(c, env, svid):
    """FetchX509SVID streams: the full state again on every change."""
    a = c.agents["agent"]
    added = sigil.TD_ID + "/e2e/added-later"
    w = sigil.Workload(env.wl, a.sock)
    stream = w.stream_x509(timeout=40)
    try:
        first = next(stream)
        assert WORKLOAD_ID in [s.spiffe_id for s in first.svids]
        assert added not in [s.spiffe_id for s in first.svids]
        eid = c.create_entry(added, a.spiffe_id, ["unix:uid:%d" % os.getuid()])
        for msg in stream:
            ids = [s.spiffe_id for s in msg.svids]
            if added in ids:
                assert WORKLOAD_ID in ids, "an update must carry the full state"
                break
        r = c.server_cli("entry delete", "-entryID", eid)
        assert r.returncode == 0, r.out
        for msg in stream:
            ids = [s.spiffe_id for s in msg.svids]
            if added not in ids:
                assert WORKLOAD_ID in ids
                break
    finally:
        stream.cancel()
        w.close()


def test_entry_dns_names_and_ttl_in_svid(c, env):
    import datetime

    a = c.agents["agent"]
    wid = sigil.TD_ID + "/e2e/dns-ttl"
    c.create_entry(wid, a.spiffe_id, ["unix:uid:%d" % os.getuid()], "-dns", "svc.example.org", "-dns",
                   "alt.example.org", "-x509SVIDTTL", "600")
    s = sigil.wait_for_svid(env.wl, a.sock, wid)
    leaf = x509.load_der_x509_certificate(sigil.split_der_certs(s.x509_svid)[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["alt.example.org", "svc.example.org"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [wid]
    life = leaf.not_valid_after - leaf.not_valid_before
    assert datetime.timedelta(minutes=9) <= life <= datetime.timedelta(minutes=12), life


def test_unix_path_and_sha256_selectors(c, env):
    import hashlib
    import sys as _sys

    a = c.agents["agent"]
    exe = os.path.realpath(_sys.executable)
    with open(exe, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    by_path = sigil.TD_ID + "/e2e/by-path"
    by_hash = sigil.TD_ID + "/e2e/by-sha256"
    wrong = sigil.TD_ID + "/e2e/wrong-path"
    c.create_entry(by_path, a.spiffe_id, ["unix:path:" + exe])
    c.create_entry(by_hash, a.spiffe_id, ["unix:sha256:" + digest, "unix:uid:%d" % os.getuid()])
    c.create_entry(wrong, a.spiffe_id, ["unix:path:/no/such/binary", "unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, a.sock, by_path)
    sigil.wait_for_svid(env.wl, a.sock, by_hash)
    with sigil.Workload(env.wl, a.sock) as w:
        ids = [s.spiffe_id for s in w.x509().svids]
    assert wrong not in ids, "an entry matched although one of its selectors does not"


def test_agent_healthcheck(c):
    r = c.agents["agent"].cli("healthcheck")
    assert r.returncode == 0, r.out
    r = sigil.run([sigil.AGENT_BIN, "healthcheck", "-socketPath", os.path.join(c.dir, "nope.sock")])
    assert r.returncode != 0 and r.returncode < 128, r.out


def test_first_message_arrives_at_once(c, env, svid):
    import time

    a = c.agents["agent"]
    with sigil.Workload(env.wl, a.sock) as w:
        t0 = time.monotonic()
        resp = w.x509()
        took = time.monotonic() - t0
    assert WORKLOAD_ID in [s.spiffe_id for s in resp.svids]
    assert took < 1.0, "first FetchX509SVID message took %.3fs" % took


def test_cli_fetch_no_agent_is_clear_error(c):
    import time

    missing = os.path.join(c.dir, "no-agent.sock")
    t0 = time.monotonic()
    r = sigil.run([sigil.AGENT_BIN, "api", "fetch", "x509", "-socketPath", missing, "-timeout", "2s"], timeout=20)
    assert r.returncode != 0 and r.returncode < 128, r.out
    assert time.monotonic() - t0 < 10
    assert "no-agent.sock" in r.out or "connect" in r.out.lower(), r.out
