"""Garbage and oversized input on every socket: a clean error, and the daemons stay up."""

import os
import socket
import time

import grpc
import pytest

import sigil

WID = sigil.TD_ID + "/bad/ok"
BLOB_10M = os.urandom(10 * 1024 * 1024)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

PAYLOADS = {
    "random-4k": os.urandom(4096),
    "http1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2-preface-then-junk": H2_PREFACE + os.urandom(2048),
    # An HTTP/2 frame header claiming a 16 MiB frame, then nothing.
    "h2-huge-frame": H2_PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x00",
    "oversized-10MiB": BLOB_10M,
    "tls-hello-junk": b"\x16\x03\x01\x02\x00" + os.urandom(512),
}


def _blast(family, addr, data, timeout=5):
    """Sends data, then reads until the peer closes or the timeout; returns how it ended."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return "closed during send"
        s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    return "closed"
            except ConnectionResetError:
                return "reset"
        return "open"
    except socket.timeout:
        return "timeout"
    finally:
        s.close()


@pytest.fixture(scope="module")
def ready(cluster, agent, env):
    cluster.create_entry(WID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    sigil.wait_for_svid(env.wl, agent.sock, WID)
    return cluster


def _still_serving(cluster, env):
    a = cluster.agents["agent"]
    assert cluster.server.alive(), "sigil-server died"
    assert a.daemon.alive(), "sigil-agent died"
    assert cluster.server_cli("healthcheck").returncode == 0
    with sigil.Workload(env.wl, a.sock) as w:
        resp = w.x509()
    assert WID in [s.spiffe_id for s in resp.svids]
    r = sigil.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % cluster.port, "-CAfile", cluster.bundle_path,
                   "-verify_return_error"], input_=b"", timeout=20)
    assert "Verify return code: 0 (ok)" in r.stdout, r.out


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("target", ["workload", "admin", "node"])
def test_bad_bytes_on_socket(ready, env, target, payload):
    c = ready
    if target == "workload":
        fam, addr = socket.AF_UNIX, c.agents["agent"].sock
    elif target == "admin":
        fam, addr = socket.AF_UNIX, c.admin_sock
    else:
        fam, addr = socket.AF_INET, ("127.0.0.1", c.port)
    how = _blast(fam, addr, PAYLOADS[payload])
    # The daemon may answer with an error frame or keep the connection
    # until it times out, but it must not die.
    assert how in ("closed", "closed during send", "reset", "open", "timeout")
    _still_serving(c, env)


def test_bad_many_connections_at_once(ready, env):
    c = ready
    socks = []
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(c.agents["agent"].sock)
        s.sendall(os.urandom(64))
        socks.append(s)
    for s in socks:
        s.close()
    _still_serving(c, env)


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", os.urandom(1024)],
                         ids=["ff", "bad-varint", "random"])
def test_bad_protobuf_body_workload(ready, env, body):
    a = ready.agents["agent"]
    with sigil.Workload(env.wl, a.sock) as w:
        code, details, _ = w.call("FetchX509SVID", raw=body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    _still_serving(ready, env)


def test_bad_oversized_grpc_message_workload(ready, env):
    a = ready.agents["agent"]
    with sigil.Workload(env.wl, a.sock) as w:
        code, details, _ = w.call("FetchX509SVID", raw=b"\x0a\x80\x80\x80\x05" + BLOB_10M[:5 * 1024 * 1024])
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, details)
    _still_serving(ready, env)


def test_bad_unknown_method_workload(ready, env):
    a = ready.agents["agent"]
    with grpc.insecure_channel("unix:" + a.sock) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/SpiffeWorkloadAPI/NoSuchMethod", request_serializer=lambda x: x,
                           response_deserializer=lambda x: x)(b"", metadata=sigil.HEADER, timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED, ei.value
    _still_serving(ready, env)


@pytest.mark.parametrize("method", ["CreateEntry", "ListEntries", "GenerateToken", "EvictAgent"])
def test_bad_protobuf_body_admin(ready, env, method):
    with grpc.insecure_channel("unix:" + ready.admin_sock) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/sigil.admin.v1.Admin/" + method, request_serializer=lambda x: x,
                           response_deserializer=lambda x: x)(b"\xff\xff\xff", timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (ei.value.code(), ei.value.details())
    _still_serving(ready, env)


def test_bad_protobuf_body_node(ready, env):
    b = sigil.NodeTLSBridge(ready.port, ready.bundle_path)
    try:
        with b.channel() as ch:
            with pytest.raises(grpc.RpcError) as ei:
                for _ in ch.stream_stream("/sigil.node.v1.Node/AttestAgent", request_serializer=lambda x: x,
                                          response_deserializer=lambda x: x)(iter([b"\xff\xff\xff"]), timeout=5):
                    pass
    finally:
        b.close()
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (ei.value.code(), ei.value.details())
    _still_serving(ready, env)
