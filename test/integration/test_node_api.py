"""Node API (agent <-> server) as a client that is not a sigil agent sees it.

grpcio reaches the node port through sigil.NodeTLSBridge: grpcio's own TLS
credentials check a host name and cannot accept the server's URI-only
certificate, so the bridge does TLS with Python's ssl module (chain checked
against the trust bundle, exactly one URI SAN = spiffe://<td>/spire/server,
ALPN h2, optional client certificate) and grpcio speaks HTTP/2 through it.
"""

import os

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sigil

NODE = "/sigil.node.v1.Node/"
MINE = sigil.TD_ID + "/node/mine"
OTHER = sigil.TD_ID + "/node/other"
OTHER_AGENT = sigil.TD_ID + "/spire/agent/join_token/not-this-agent"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.fixture(scope="module")
def setup(cluster, agent, env):
    mine = cluster.create_entry(MINE, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    other = cluster.create_entry(OTHER, OTHER_AGENT, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, MINE)
    d = sigil.mkdir(os.path.join(cluster.dir, "node"), 0o700)
    cert, key, agent_id = sigil.find_agent_credentials(agent.data, d)
    assert agent_id == agent.spiffe_id
    return {"mine": mine, "other": other, "cert": cert, "key": key, "dir": d}


def _sync(ch, pb, timeout=5):
    it = ch.unary_stream(NODE + "Sync", request_serializer=lambda m: m.SerializeToString(),
                         response_deserializer=pb.SyncResponse.FromString)(pb.SyncRequest(), timeout=timeout)
    try:
        return next(it)
    finally:
        it.cancel()


def _mint(ch, pb, params, timeout=5):
    return ch.unary_unary(NODE + "MintX509SVIDs", request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=pb.MintX509SVIDsResponse.FromString)(
        pb.MintX509SVIDsRequest(params=params), timeout=timeout)


def _spki():
    k = ec.generate_private_key(ec.SECP256R1())
    return k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_node_server_presents_its_spiffe_id_and_needs_no_client_cert(cluster):
    r = sigil.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % cluster.port, "-CAfile", cluster.bundle_path,
                   "-verify_return_error", "-showcerts", "-alpn", "h2"], input_=b"", timeout=20)
    assert "Verify return code: 0 (ok)" in r.stdout, r.out
    leaf = x509.load_pem_x509_certificate(sigil.pem_blocks(r.stdout)[0].encode())
    assert sigil.uri_sans(leaf) == [sigil.SERVER_ID]
    assert "ALPN protocol: h2" in r.stdout, r.out


@pytest.mark.parametrize("rpc", ["Sync", "MintX509SVIDs"])
def test_node_call_without_client_cert_refused(cluster, setup, env, rpc):
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path)
    try:
        with b.channel() as ch:
            with pytest.raises(grpc.RpcError) as ei:
                if rpc == "Sync":
                    _sync(ch, env.node)
                else:
                    _mint(ch, env.node, [env.node.X509SVIDParams(entry_id=setup["mine"], public_key=_spki())])
        assert "handshake ok" in b.events, b.events
        assert ei.value.code() in REFUSED, (ei.value.code(), ei.value.details())
    finally:
        b.close()


def test_node_client_cert_from_foreign_ca_refused(cluster, setup, env):
    _, fcert, fkey = sigil.make_foreign_ca(setup["dir"], uri=sigil.TD_ID + "/spire/agent/join_token/x")
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, fcert, fkey)
    try:
        with b.channel() as ch:
            with pytest.raises(grpc.RpcError) as ei:
                _sync(ch, env.node)
        assert ei.value.code() in REFUSED + (grpc.StatusCode.UNAVAILABLE,), ei.value
    finally:
        b.close()
    assert cluster.server.alive()


def test_node_agent_svid_syncs_its_entries(cluster, setup, env):
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, setup["cert"], setup["key"])
    try:
        with b.channel() as ch:
            resp = _sync(ch, env.node)
    finally:
        b.close()
    ids = [e.spiffe_id for e in resp.entries]
    assert MINE in ids, ids
    assert OTHER not in ids, ids
    assert resp.bundle.trust_domain in (sigil.TD, sigil.TD_ID)
    assert resp.bundle.x509_authorities


def test_node_mint_only_authorised_entries(cluster, setup, env):
    pb = env.node
    params = [
        pb.X509SVIDParams(entry_id=setup["mine"], public_key=_spki()),
        pb.X509SVIDParams(entry_id=setup["other"], public_key=_spki()),
        pb.X509SVIDParams(entry_id="no-such-entry", public_key=_spki()),
        pb.X509SVIDParams(entry_id=setup["mine"], public_key=b"\x30\x03garbage"),
    ]
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path, setup["cert"], setup["key"])
    try:
        with b.channel() as ch:
            resp = _mint(ch, pb, params)
    finally:
        b.close()
    assert len(resp.results) == 4
    ok, other, missing, bad = resp.results
    assert ok.error_code == 0, ok
    leaf = x509.load_der_x509_certificate(ok.svid.cert_chain[0])
    assert sigil.uri_sans(leaf) == [MINE]
    assert other.entry_id == setup["other"]
    assert other.error_code == grpc.StatusCode.PERMISSION_DENIED.value[0], other
    assert not other.svid.cert_chain
    assert missing.error_code in (grpc.StatusCode.PERMISSION_DENIED.value[0], grpc.StatusCode.NOT_FOUND.value[0]), missing
    assert bad.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], bad
    assert bad.error, "no message for a malformed public key"


def test_node_attest_with_garbage_payload_refused(cluster, env):
    pb = env.node
    req = pb.AttestAgentRequest(params=pb.AttestAgentParams(
        data=pb.AttestationData(type="join_token", payload=b"\xff\x00not-a-token"), csr=b"\x30\x01"))
    b = sigil.NodeTLSBridge(cluster.port, cluster.bundle_path)
    try:
        with b.channel() as ch:
            call = ch.stream_stream(NODE + "AttestAgent", request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=pb.AttestAgentResponse.FromString)
            with pytest.raises(grpc.RpcError) as ei:
                for _ in call(iter([req]), timeout=5):
                    pass
    finally:
        b.close()
    assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                               grpc.StatusCode.UNAUTHENTICATED), ei.value
    assert cluster.server.alive()
