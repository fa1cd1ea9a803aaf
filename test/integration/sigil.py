"""Helpers for the sigil integration tests.

Everything here drives the real binaries through their public interfaces:
the CLI, the Workload API socket (grpcio), the node API port (grpcio through
a local TLS bridge, see NodeTLSBridge) and files the daemons write.
"""

import base64
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.environ.get("SIGIL_BUILD", os.path.join(REPO, "build")))
BIN = os.path.join(BUILD, "bin")
SERVER_BIN = os.path.join(BIN, "sigil-server")
AGENT_BIN = os.path.join(BIN, "sigil-agent")
PYTHON = "/usr/bin/python3"

TD = "example.org"
TD_ID = "spiffe://" + TD
SERVER_ID = TD_ID + "/spire/server"
HEADER = (("workload.spiffe.io", "true"),)
STOP_GRACE_S = 5.0

# Daemons started by the current test module; logs are attached to failure
# reports by conftest.py.
DAEMONS = []
# Every daemon log of the session, scanned for sanitizer reports at the end
# (`make check` runs this suite against ASan+UBSan builds).
ALL_LOGS = []
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# --------------------------------------------------------------------------
# message classes

PROTOS = {
    "workload": "spiffe/workload.proto",
    "node": "sigil/node/v1/node.proto",
    "admin": "sigil/admin/v1/admin.proto",
}


def gen_protos(dest):
    """Generates the Python message classes into dest (protoc --python_out)."""
    os.makedirs(dest, exist_ok=True)
    subprocess.run(
        ["protoc", "-I" + os.path.join(REPO, "proto"), "--python_out=" + dest]
        + [os.path.join(REPO, "proto", p) for p in PROTOS.values()],
        check=True,
    )
    return dest


def load_pb(pydir, name):
    """Loads one generated module by file path.

    The generated package is called `sigil`, like this helper module, so it
    is loaded by path instead of through sys.path.
    """
    path = os.path.join(pydir, PROTOS[name].replace(".proto", "_pb2.py"))
    modname = "sigil_pb_" + name
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------
# small utilities


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def run(cmd, timeout=30, cwd=None, env=None, input_=None):
    """Runs a command; returns CompletedProcess with .out = stdout+stderr."""
    p = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        input=input_,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    p.stdout = p.stdout.decode(errors="replace")
    p.stderr = p.stderr.decode(errors="replace")
    p.out = p.stdout + p.stderr
    return p


def wait_until(fn, timeout, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise TimeoutError("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))


def mkdir(path, mode=0o755):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    return path


def pem_certs(ders):
    return "".join(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode() for d in ders)


def split_der_certs(blob):
    """Splits concatenated DER certificates (Workload API bundle/chain format)."""
    out = []
    i = 0
    while i < len(blob):
        if blob[i] != 0x30:
            raise ValueError("not a DER SEQUENCE at offset %d" % i)
        ln = blob[i + 1]
        if ln < 0x80:
            hdr, body = 2, ln
        else:
            n = ln & 0x7F
            body = int.from_bytes(blob[i + 2 : i + 2 + n], "big")
            hdr = 2 + n
        out.append(blob[i : i + hdr + body])
        i += hdr + body
    return out


def pem_ders(text):
    """DER bytes of every certificate in a PEM text (formatting-independent compare)."""
    return [x509.load_pem_x509_certificate(b.encode()).public_bytes(serialization.Encoding.DER) for b in pem_blocks(text)]


def uri_sans(cert):
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def pem_blocks(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def make_foreign_ca(dirpath, uri="spiffe://foreign.test/workload"):
    """A CA and leaf unrelated to sigil: returns (ca.pem, leaf.pem, leaf.key)."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "foreign")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "foreign-leaf")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (os.path.join(dirpath, "foreign-ca.pem"), os.path.join(dirpath, "foreign.pem"), os.path.join(dirpath, "foreign.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return paths


# --------------------------------------------------------------------------
# daemons


class Daemon:
    def __init__(self, name, args, log_path, cwd=None):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.cwd = cwd
        self.rc = None
        self._log = open(log_path, "ab")
        self._log.write(("=== start: %s\n" % " ".join(args)).encode())
        self._log.flush()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
        DAEMONS.append(self)
        ALL_LOGS.append(log_path)

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace=STOP_GRACE_S):
        """SIGTERM, then wait; returns (exited_within_grace, seconds, rc)."""
        if self.proc.poll() is not None:
            self.rc = self.proc.returncode
            self._log.close()
            return True, 0.0, self.rc
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
            ok = True
        except subprocess.TimeoutExpired:
            ok = False
            self.proc.kill()
            self.proc.wait(5)
        self.rc = self.proc.returncode
        self._log.close()
        return ok, time.monotonic() - t0, self.rc


class Cluster:
    """One sigil-server and its agents in a private temp dir, on loopback."""

    def __init__(self, env, name):
        self.env = env
        self.dir = mkdir(os.path.join(env.base, name))
        self.port = free_port()
        self.admin_sock = os.path.join(self.dir, "admin", "api.sock")
        self.data_dir = os.path.join(self.dir, "data")
        self.server_conf = os.path.join(self.dir, "server.conf")
        self.bundle_path = os.path.join(self.dir, "bundle.pem")
        self.server = None
        self.agents = {}
        self.stop_failures = []
        del DAEMONS[:]

    # ---- server

    def write_server_conf(self, extra_server="", extra_plugins=""):
        mkdir(self.data_dir, 0o700)
        d = self.data_dir
        text = f"""server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.port}"
    socket_path = "{self.admin_sock}"
    trust_domain = "{TD}"
    data_dir = "{d}"
    log_level = "DEBUG"
    default_x509_svid_ttl = "1h"
{extra_server}}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{d}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{d}/keys.json"
        }}
    }}
{extra_plugins}}}
"""
        with open(self.server_conf, "w") as f:
            f.write(text)
        return self.server_conf

    def start_server(self, wait=True):
        if not os.path.exists(self.server_conf):
            self.write_server_conf()
        self.server = Daemon(
            "sigil-server",
            [SERVER_BIN, "run", "-config", self.server_conf],
            os.path.join(self.dir, "server.log"),
        )
        if wait:
            self.wait_server_healthy()
        return self.server

    def wait_server_healthy(self, timeout=20):
        def ok():
            if not self.server.alive():
                raise AssertionError("sigil-server exited with %s:\n%s" % (self.server.proc.returncode, self.server.log()[-4000:]))
            return self.server_cli("healthcheck").returncode == 0

        wait_until(ok, timeout, what="sigil-server healthcheck")

    def server_cli(self, *args, timeout=30):
        """`sigil-server <subcommand...> -socketPath <admin> <args...>`.

        args[0] may hold several words ("entry create").
        """
        words = args[0].split()
        return run([SERVER_BIN] + words + ["-socketPath", self.admin_sock] + list(args[1:]), timeout=timeout)

    def bundle_pem(self):
        p = self.server_cli("bundle show")
        assert p.returncode == 0, p.out
        assert "BEGIN CERTIFICATE" in p.stdout, p.out
        return p.stdout

    def write_bundle(self, path=None):
        path = path or self.bundle_path
        with open(path, "w") as f:
            f.write(self.bundle_pem())
        return path

    def token(self, spiffe_id=None, ttl=None):
        args = ["token generate"]
        if spiffe_id:
            args += ["-spiffeID", spiffe_id]
        if ttl is not None:
            args += ["-ttl", str(ttl)]
        p = self.server_cli(*args)
        assert p.returncode == 0, p.out
        m = re.search(r"Token:\s*(\S+)", p.stdout)
        assert m, "no 'Token: <value>' in output: %r" % p.out
        return m.group(1)

    def create_entry(self, spiffe_id, parent_id, selectors, *extra):
        args = ["entry create", "-spiffeID", spiffe_id, "-parentID", parent_id]
        for s in selectors:
            args += ["-selector", s]
        p = self.server_cli(*args, *extra)
        assert p.returncode == 0, "entry create failed: %s" % p.out
        m = re.search(r"Entry ID\s*:\s*(\S+)", p.stdout, re.I)
        if m:
            return m.group(1)
        return self.entry_id(spiffe_id, parent_id)

    def entries_json(self):
        p = self.server_cli("entry show", "-output", "json")
        assert p.returncode == 0, p.out
        return json.loads(p.stdout)

    def entry_id(self, spiffe_id, parent_id=None):
        for d in find_entries(self.entries_json()):
            if id_str(d.get("spiffe_id")) == spiffe_id and (parent_id is None or id_str(d.get("parent_id")) == parent_id):
                return d.get("id") or d.get("entry_id")
        raise AssertionError("entry %s not in `entry show -output json`" % spiffe_id)

    def agent_ids(self):
        p = self.server_cli("agent list")
        assert p.returncode == 0, p.out
        return sorted(set(re.findall(r"spiffe://%s/spire/agent/\S+" % re.escape(TD), p.stdout)))

    # ---- agents

    def write_agent_conf(self, name, trust_bundle_path=None):
        adir = mkdir(os.path.join(self.dir, name))
        data = mkdir(os.path.join(adir, "data"), 0o700)
        sock = os.path.join(adir, "public", "api.sock")
        conf = os.path.join(adir, "agent.conf")
        text = f"""agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{self.port}"
    socket_path = "{sock}"
    trust_bundle_path = "{trust_bundle_path or self.bundle_path}"
    trust_domain = "{TD}"
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = true
        }}
    }}
}}
"""
        with open(conf, "w") as f:
            f.write(text)
        return Agent(self, name, conf, sock, data, adir)

    def start_agent(self, name="agent", token=None, wait=True):
        """Starts an agent (with a new token unless token=False) and waits for its socket."""
        if not os.path.exists(self.bundle_path):
            self.write_bundle()
        a = self.agents.get(name) or self.write_agent_conf(name)
        self.agents[name] = a
        if token is None:
            token = self.token()
        a.start(token or None)
        if wait:
            a.wait_socket()
        return a

    def shutdown(self):
        """Stops every daemon with SIGTERM; records any that outlived the grace period."""
        for a in self.agents.values():
            if a.daemon:
                a.stop()
        if self.server:
            self.stop_server()
        return self.stop_failures

    def stop_server(self):
        ok, secs, rc = self.server.stop()
        if not ok:
            self.stop_failures.append("sigil-server did not exit within %.0fs of SIGTERM" % STOP_GRACE_S)
        return ok, secs, rc


class Agent:
    def __init__(self, cluster, name, conf, sock, data, adir):
        self.cluster = cluster
        self.name = name
        self.conf = conf
        self.sock = sock
        self.data = data
        self.dir = adir
        self.daemon = None
        self.token = None

    @property
    def spiffe_id(self):
        return "%s/spire/agent/join_token/%s" % (TD_ID, self.token)

    def start(self, token=None):
        args = [AGENT_BIN, "run", "-config", self.conf]
        if token:
            self.token = token
            args += ["-joinToken", token]
        self.daemon = Daemon("sigil-agent[%s]" % self.name, args, os.path.join(self.dir, "agent.log"))
        return self.daemon

    def wait_socket(self, timeout=20):
        def ok():
            if not self.daemon.alive():
                raise AssertionError("sigil-agent exited with %s:\n%s" % (self.daemon.proc.returncode, self.daemon.log()[-4000:]))
            return os.path.exists(self.sock)

        wait_until(ok, timeout, what="agent socket %s" % self.sock)

    def stop(self):
        ok, secs, rc = self.daemon.stop()
        if not ok:
            self.cluster.stop_failures.append("%s did not exit within %.0fs of SIGTERM" % (self.daemon.name, STOP_GRACE_S))
        return ok, secs, rc

    def cli(self, *args, timeout=30, env=None):
        words = args[0].split()
        return run([AGENT_BIN] + words + ["-socketPath", self.sock] + list(args[1:]), timeout=timeout, env=env)


# --------------------------------------------------------------------------
# entry JSON helpers (tolerant of nesting: {"entries": [...]} or SPIRE's shapes)


def id_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and "trust_domain" in v:
        return "spiffe://%s%s" % (v["trust_domain"], v.get("path", ""))
    return None


def find_entries(obj):
    out = []
    if isinstance(obj, dict):
        if "spiffe_id" in obj and ("parent_id" in obj or "selectors" in obj):
            out.append(obj)
        else:
            for v in obj.values():
                out += find_entries(v)
    elif isinstance(obj, list):
        for v in obj:
            out += find_entries(v)
    return out


# --------------------------------------------------------------------------
# Workload API client (grpcio, generic calls)


class Workload:
    STREAMS = {
        "FetchX509SVID": ("X509SVIDRequest", "X509SVIDResponse"),
        "FetchX509Bundles": ("X509BundlesRequest", "X509BundlesResponse"),
        "FetchJWTBundles": ("JWTBundlesRequest", "JWTBundlesResponse"),
        "FetchWITSVID": ("WITSVIDRequest", "WITSVIDResponse"),
        "FetchWITBundles": ("WITBundlesRequest", "WITBundlesResponse"),
    }
    UNARY = {
        "FetchJWTSVID": ("JWTSVIDRequest", "JWTSVIDResponse"),
        "ValidateJWTSVID": ("ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse"),
    }

    def __init__(self, pb, sock):
        self.pb = pb
        self.sock = sock
        self.channel = grpc.insecure_channel("unix:" + sock)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def call(self, method, request=None, metadata=HEADER, timeout=5, raw=None):
        """Returns (code, details, first_response). Streams: the first message."""
        if method in self.STREAMS:
            req_name, resp_name = self.STREAMS[method]
        else:
            req_name, resp_name = self.UNARY[method]
        resp_cls = getattr(self.pb, resp_name)
        if raw is not None:
            body, ser = raw, (lambda x: x)
        else:
            body = request if request is not None else getattr(self.pb, req_name)()
            ser = lambda m: m.SerializeToString()  # noqa: E731
        path = "/SpiffeWorkloadAPI/" + method
        try:
            if method in self.STREAMS:
                it = self.channel.unary_stream(path, request_serializer=ser, response_deserializer=resp_cls.FromString)(
                    body, metadata=metadata, timeout=timeout
                )
                try:
                    first = next(it)
                finally:
                    it.cancel()
                return grpc.StatusCode.OK, "", first
            resp = self.channel.unary_unary(path, request_serializer=ser, response_deserializer=resp_cls.FromString)(
                body, metadata=metadata, timeout=timeout
            )
            return grpc.StatusCode.OK, "", resp
        except grpc.RpcError as e:
            return e.code(), e.details(), None

    def x509(self, timeout=5):
        code, details, resp = self.call("FetchX509SVID", timeout=timeout)
        if code != grpc.StatusCode.OK:
            raise RpcFailed(code, details)
        return resp

    def stream_x509(self, timeout=60):
        """An open FetchX509SVID stream iterator (cancel() it when done)."""
        return self.channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self.pb.X509SVIDResponse.FromString,
        )(self.pb.X509SVIDRequest(), metadata=HEADER, timeout=timeout)


class RpcFailed(Exception):
    def __init__(self, code, details):
        super().__init__("%s: %s" % (code, details))
        self.code = code
        self.details = details


def wait_for_svid(pb, sock, spiffe_id, timeout=20):
    """Retries FetchX509SVID until an SVID with spiffe_id arrives; returns that X509SVID."""
    last = [None]

    def attempt():
        with Workload(pb, sock) as w:
            code, details, resp = w.call("FetchX509SVID", timeout=3)
        last[0] = (code, details, [s.spiffe_id for s in resp.svids] if resp else None)
        if code != grpc.StatusCode.OK:
            return None
        for s in resp.svids:
            if s.spiffe_id == spiffe_id:
                return s
        return None

    try:
        return wait_until(attempt, timeout, interval=0.5, what="SVID %s" % spiffe_id)
    except TimeoutError:
        raise AssertionError("no SVID for %s within %ds; last FetchX509SVID: %r" % (spiffe_id, timeout, last[0]))


def write_svid(svid, dirpath, stem):
    """Writes leaf.pem, chain (rest), key (PKCS#8 PEM) and bundle of one X509SVID."""
    certs = split_der_certs(svid.x509_svid)
    paths = {
        "leaf": os.path.join(dirpath, stem + ".leaf.pem"),
        "chain": os.path.join(dirpath, stem + ".chain.pem"),
        "key": os.path.join(dirpath, stem + ".key"),
        "bundle": os.path.join(dirpath, stem + ".bundle.pem"),
        "full": os.path.join(dirpath, stem + ".full.pem"),
    }
    with open(paths["leaf"], "w") as f:
        f.write(pem_certs(certs[:1]))
    with open(paths["chain"], "w") as f:
        f.write(pem_certs(certs[1:]))
    with open(paths["full"], "w") as f:
        f.write(pem_certs(certs))
    key = serialization.load_der_private_key(svid.x509_svid_key, None)
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    with open(paths["bundle"], "w") as f:
        f.write(pem_certs(split_der_certs(svid.bundle)))
    return paths


def openssl_verify(cafile, leaf, untrusted=None):
    cmd = ["openssl", "verify", "-CAfile", cafile]
    if untrusted and os.path.getsize(untrusted) > 0:
        cmd += ["-untrusted", untrusted]
    return run(cmd + [leaf])


# --------------------------------------------------------------------------
# node API access


class NodeTLSBridge:
    """A loopback TCP port that wraps each connection in TLS to the node API.

    grpcio's Python credentials are the grpc_ssl_* kind, which check a host
    name and cannot verify a server certificate whose only name is a URI SAN
    (spiffe://<td>/spire/server); the target-name override does not help.
    So grpcio talks plaintext HTTP/2 to this bridge, and the bridge does the
    TLS: it verifies the server's chain against the trust bundle, checks that
    the server presents exactly one URI SAN equal to the server's SPIFFE ID,
    offers ALPN h2, and presents a client certificate when given one.
    Handshake outcomes are recorded in self.events.
    """

    def __init__(self, port, cafile, certfile=None, keyfile=None, expect_id=SERVER_ID):
        self.target = ("127.0.0.1", port)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(cafile)
        if certfile:
            self.ctx.load_cert_chain(certfile, keyfile)
        self.ctx.set_alpn_protocols(["h2"])
        self.expect_id = expect_id
        self.events = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            raw = socket.create_connection(self.target, timeout=10)
            tls = self.ctx.wrap_socket(raw)
            peer = tls.getpeercert()
            uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
            if uris != [self.expect_id]:
                self.events.append("server URI SANs %r, want [%r]" % (uris, self.expect_id))
                tls.close()
                c.close()
                return
            self.events.append("handshake ok")
            tls.settimeout(None)
        except Exception as e:  # noqa: BLE001 - recorded for the test
            self.events.append("handshake failed: %s" % e)
            c.close()
            return
        self._pipe(c, tls)

    @staticmethod
    def _pipe(c, tls):
        socks = [c, tls]
        try:
            while True:
                if tls.pending():
                    r = [tls]
                else:
                    r, _, _ = select.select(socks, [], [], 30)
                if not r:
                    continue
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (tls if s is c else c).sendall(data)
        except (OSError, ssl.SSLError):
            return
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass

    def channel(self):
        return grpc.insecure_channel("127.0.0.1:%d" % self.port)

    def close(self):
        self._stop = True
        self.lsock.close()


def find_agent_credentials(data_dir, outdir):
    """Finds the agent's SVID and key in its data dir; writes cert.pem and key.pem.

    The file layout is the agent's business, so every file is scanned for a
    certificate with an agent SPIFFE ID and a private key that matches it.
    """
    from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key

    certs, keys = [], []

    def take_blob(b):
        for blk in pem_blocks(b.decode(errors="replace")):
            try:
                certs.append(x509.load_pem_x509_certificate(blk.encode()))
            except Exception:  # noqa: BLE001
                pass
        for loader in (lambda d: load_pem_private_key(d, None), lambda d: load_der_private_key(d, None)):
            try:
                keys.append(loader(b))
                break
            except Exception:  # noqa: BLE001
                pass
        try:
            for d in split_der_certs(b):
                certs.append(x509.load_der_x509_certificate(d))
        except Exception:  # noqa: BLE001
            pass

    def walk_json(v):
        if isinstance(v, dict):
            for x in v.values():
                walk_json(x)
        elif isinstance(v, list):
            for x in v:
                walk_json(x)
        elif isinstance(v, str):
            if "-----BEGIN" in v:
                take_blob(v.encode())
            else:
                try:
                    take_blob(base64.b64decode(v, validate=True))
                except Exception:  # noqa: BLE001
                    pass

    for root, _, files in os.walk(data_dir):
        for fn in files:
            p = os.path.join(root, fn)
            if fn.endswith((".sock", ".sqlite3", "-wal", "-shm")) or os.path.getsize(p) > 1 << 20:
                continue
            with open(p, "rb") as f:
                b = f.read()
            take_blob(b)
            try:
                walk_json(json.loads(b))
            except Exception:  # noqa: BLE001
                pass

    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    for c in certs:
        if not any(u.startswith(TD_ID + "/spire/agent/") for u in uri_sans(c)):
            continue
        for k in keys:
            if k.public_key().public_bytes(der, pub) == c.public_key().public_bytes(der, pub):
                cp, kp = os.path.join(outdir, "agent.pem"), os.path.join(outdir, "agent.key")
                with open(cp, "wb") as f:
                    f.write(c.public_bytes(serialization.Encoding.PEM))
                with open(kp, "wb") as f:
                    f.write(
                        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                    )
                return cp, kp, uri_sans(c)[0]
    raise AssertionError(
        "no agent SVID with a matching key found under %s (%d certs, %d keys seen)" % (data_dir, len(certs), len(keys))
    )


class Env:
    """Session state: a world-readable temp base and the message classes."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="sgit.", dir="/tmp")
        os.chmod(self.base, 0o755)
        self.pydir = gen_protos(os.path.join(self.base, "py"))
        self.wl = load_pb(self.pydir, "workload")
        self.node = load_pb(self.pydir, "node")

    def sanitizer_reports(self):
        """(log path, first report line) for every daemon log with a sanitizer report."""
        found = []
        for path in ALL_LOGS:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(m in line for m in SANITIZER_MARKERS):
                    found.append((path, line.strip()))
                    break
        return found

    def cleanup(self):
        reports = self.sanitizer_reports()
        if not os.environ.get("SIGIL_KEEP_TMP") and not reports:
            shutil.rmtree(self.base, ignore_errors=True)
        assert not reports, "sanitizer reports in daemon logs: %s" % reports


def stop_cluster(c):
    """Teardown: SIGTERM every daemon; fails if one outlives the grace period."""
    failures = c.shutdown()
    assert not failures, "; ".join(failures)
