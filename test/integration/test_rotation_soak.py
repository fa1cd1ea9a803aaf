"""Rotation soak: one open FetchX509SVID stream across SVID and CA rotations.

SLOW: about 2.5 minutes (phase 1 ~130 s, phase 2 ~25 s).

The server runs with second-scale TTLs: ca_ttl 60 s, default_x509_svid_ttl
6 s, agent_ttl 20 s, KeyManager "disk" (self-signed CA mode, so an SVID's
chain is just its leaf and the bundle holds the roots). One agent, one entry
for the current uid. A grpcio client keeps ONE FetchX509SVID stream open for
the whole module and checks:

 - every message: exactly one SVID, for the entry's SPIFFE ID; its leaf is not
   expired at receipt (not_after > receipt time, no slack) and not issued in
   the future (1 s slack for second-granularity timestamps); it has exactly
   one URI SAN, the entry's SPIFFE ID; it is signed by a root of the bundle
   in the same message and does not outlive that root; its key matches.
 - continuously (every 0.5 s): the SVID the client holds (the latest message)
   is not expired.

Phase 1 (~130 s, server up): at least 5 SVID rotations (distinct serials) and
at least 2 CA rotations (at least 3 distinct issuing authorities, i.e. leaf
AKIDs).
Phase 2: the server is stopped with SIGTERM just before the agent's next
renewal, kept down 2 s (less than half the 6 s SVID TTL), started again with
the same config (the disk KeyManager keeps the CA), and the same invariants
are checked for another ~20 s, including that new serials arrive after the
restart.
"""

import datetime
import os
import queue
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sigil

WID = sigil.TD_ID + "/soak/workload"
SVID_TTL = 6
PHASE1_S = 130
PHASE2_S = 20
DOWN_S = 2.0
SAMPLE_S = 0.5


@pytest.fixture(scope="module")
def c(env):
    c = sigil.Cluster(env, "test_rotation_soak")
    path = c.write_server_conf(extra_server='    ca_ttl = "60s"\n    agent_ttl = "20s"\n')
    text = open(path).read().replace('default_x509_svid_ttl = "1h"', 'default_x509_svid_ttl = "%ds"' % SVID_TTL)
    with open(path, "w") as f:
        f.write(text)
    try:
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
        c.entry = c.create_entry(WID, c.agents["agent"].spiffe_id, ["unix:uid:%d" % os.getuid()])
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


def hex_akid(cert):
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()


def hex_skid(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def not_after(cert):
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp()


def not_before(cert):
    return cert.not_valid_before.replace(tzinfo=datetime.timezone.utc).timestamp()


class Seen:
    """One received message, parsed."""

    def __init__(self, t, resp):
        self.t = t
        self.resp = resp
        self.svids = list(resp.svids)
        svid = self.svids[0] if self.svids else None
        self.leaf = None
        if svid is not None:
            self.leaf = x509.load_der_x509_certificate(sigil.split_der_certs(svid.x509_svid)[0])
            self.not_after = not_after(self.leaf)
            self.serial = self.leaf.serial_number


class Monitor:
    """Reader thread (stream -> queue), checker thread, sampler thread."""

    def __init__(self, env, sock):
        self.w = sigil.Workload(env.wl, sock)
        self.it = self.w.stream_x509(timeout=PHASE1_S + PHASE2_S + 120)
        self.q = queue.Queue()
        self.lock = threading.Lock()
        self.latest = None  # Seen
        self.msgs = []  # every Seen, in order
        self.violations = []  # (time, text)
        self.samples = 0
        self.min_held_margin = None  # smallest (not_after - now) seen by the sampler
        self.stream_error = None
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._reader, daemon=True),
            threading.Thread(target=self._checker, daemon=True),
            threading.Thread(target=self._sampler, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _reader(self):
        try:
            for resp in self.it:
                t = time.time()
                try:
                    s = Seen(t, resp)
                except Exception as e:  # noqa: BLE001 - recorded as a violation
                    self.violations.append((t, "unparsable message: %r" % e))
                    continue
                with self.lock:
                    self.latest = s
                self.q.put(s)
        except Exception as e:  # noqa: BLE001 - the stream is cancelled at the end
            if not self.stop.is_set():
                self.stream_error = e
                self.violations.append((time.time(), "stream ended: %r" % e))
        finally:
            self.q.put(None)

    def _checker(self):
        while True:
            s = self.q.get()
            if s is None:
                return
            prev = self.msgs[-1] if self.msgs else None
            self.msgs.append(s)
            # Exact form of the sampler's check: the previous SVID was still
            # valid when this message replaced it.
            if prev is not None and prev.leaf is not None and not prev.not_after > s.t:
                self.violations.append(
                    (
                        s.t,
                        "client held only an expired SVID for %.2f s: serial %x expired at %.0f, next message at %.3f"
                        % (s.t - prev.not_after, prev.serial, prev.not_after, s.t),
                    )
                )
            for problem in check_message(s):
                self.violations.append((s.t, problem))

    def _sampler(self):
        while not self.stop.wait(SAMPLE_S):
            now = time.time()
            with self.lock:
                s = self.latest
            if s is None or s.leaf is None:
                continue
            self.samples += 1
            margin = s.not_after - now
            if self.min_held_margin is None or margin < self.min_held_margin:
                self.min_held_margin = margin
            if margin <= 0:
                self.violations.append(
                    (now, "client holds only an expired SVID: serial %x expired %.1f s ago" % (s.serial, -margin))
                )

    def wait_first(self, timeout=20):
        def ok():
            assert not self.violations, fmt_violations(self.violations)
            return self.latest is not None

        sigil.wait_until(ok, timeout, what="the first FetchX509SVID message")

    def close(self):
        self.stop.set()
        self.it.cancel()
        self.w.close()
        for t in self.threads:
            t.join(5)


def check_message(s):
    """Every invariant of one message; returns a list of problems."""
    out = []
    if len(s.svids) != 1:
        return ["%d SVIDs in a message, want 1 (%r)" % (len(s.svids), [v.spiffe_id for v in s.svids])]
    svid = s.svids[0]
    leaf = s.leaf
    tag = "serial %x" % leaf.serial_number
    if svid.spiffe_id != WID:
        out.append("%s: spiffe_id %r, want %r" % (tag, svid.spiffe_id, WID))
    if not not_after(leaf) > s.t:
        out.append("%s: expired at receipt (not_after %.0f, received %.3f)" % (tag, not_after(leaf), s.t))
    if not_before(leaf) > s.t + 1:
        out.append("%s: not yet valid at receipt (not_before %.0f, received %.3f)" % (tag, not_before(leaf), s.t))
    uris = sigil.uri_sans(leaf)
    if uris != [WID]:
        out.append("%s: URI SANs %r, want exactly [%r]" % (tag, uris, WID))
    chain = sigil.split_der_certs(svid.x509_svid)
    if len(chain) != 1:
        out.append("%s: chain of %d certificates, want the leaf alone (self-signed CA mode)" % (tag, len(chain)))
    roots = [x509.load_der_x509_certificate(d) for d in sigil.split_der_certs(svid.bundle)]
    if not roots:
        out.append("%s: empty bundle" % tag)
    issuer = None
    for r in roots:
        if r.subject != leaf.issuer:
            continue
        try:
            r.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
        except Exception:  # noqa: BLE001 - another root may match
            continue
        issuer = r
        break
    if issuer is None:
        out.append(
            "%s: not signed by any root of the bundle in its message (AKID %s, roots %s)"
            % (tag, hex_akid(leaf), [hex_skid(r) for r in roots])
        )
    else:
        if hex_skid(issuer) != hex_akid(leaf):
            out.append("%s: AKID %s != issuer SKID %s" % (tag, hex_akid(leaf), hex_skid(issuer)))
        if not_after(leaf) > not_after(issuer):
            out.append("%s: outlives its CA (%.0f > %.0f)" % (tag, not_after(leaf), not_after(issuer)))
        if not not_after(issuer) > s.t:
            out.append("%s: issuing root expired at receipt" % tag)
    key = serialization.load_der_private_key(svid.x509_svid_key, None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        out.append("%s: private key does not match the leaf" % tag)
    return out


@pytest.fixture(scope="module")
def mon(c, env):
    sigil.wait_for_svid(env.wl, c.agents["agent"].sock, WID)
    m = Monitor(env, c.agents["agent"].sock)
    m.wait_first()
    yield m
    m.close()


def rotations(msgs):
    """[(receipt time, Seen)] of every message whose serial differs from the previous one."""
    out = []
    last = None
    for s in msgs:
        if s.leaf is not None and s.serial != last:
            out.append(s)
            last = s.serial
    return out


def max_gap(msgs):
    """Largest (receipt of the replacement - expiry of the SVID it replaced); negative = replaced in time."""
    r = rotations(msgs)
    gaps = [(b.t - a.not_after, a, b) for a, b in zip(r, r[1:])]
    return max(gaps, key=lambda g: g[0]) if gaps else (None, None, None)


def fmt_violations(v):
    return "\n".join("  %.3f %s" % (t, p) for t, p in v[:20])


def summary(label, msgs, m):
    r = rotations(msgs)
    auths = []
    for s in r:
        a = hex_akid(s.leaf)
        if a not in auths:
            auths.append(a)
    bundles = []
    for s in msgs:
        b = tuple(sorted(hex_skid(x509.load_der_x509_certificate(d)) for d in sigil.split_der_certs(s.svids[0].bundle)))
        if not bundles or bundles[-1] != b:
            bundles.append(b)
    gap, a, b = max_gap(msgs)
    print(
        "\n[soak %s] %d messages, %d distinct serials, %d authorities, %d bundle versions, "
        "largest expiry->replacement gap %s s, smallest held margin %s s, %d samples"
        % (
            label,
            len(msgs),
            len({s.serial for s in msgs}),
            len(auths),
            len(bundles),
            "%.2f" % gap if gap is not None else "n/a",
            "%.2f" % m.min_held_margin if m.min_held_margin is not None else "n/a",
            m.samples,
        )
    )
    return r, auths, bundles


def check_ok(label, mon, msgs_from=0):
    """Fails on the first violation, after waiting (up to a TTL) for the
    replacement SVID so the report shows how long the client was left with an
    expired one."""
    if mon.stream_error is None and not mon.violations:
        return
    t_bad = mon.violations[0][0] if mon.violations else time.time()
    deadline = time.time() + SVID_TTL + 2
    while time.time() < deadline and mon.stream_error is None:
        if any(s.t > t_bad for s in mon.msgs[msgs_from:]):
            break
        time.sleep(0.2)
    time.sleep(0.3)
    summary(label + " (failing)", list(mon.msgs[msgs_from:]), mon)
    assert mon.stream_error is None, "stream ended: %r" % mon.stream_error
    raise AssertionError("invariant violations:\n" + fmt_violations(mon.violations))


def test_rotation_soak_1_steady(c, mon):
    t0 = time.time()
    while time.time() - t0 < PHASE1_S:
        time.sleep(1)
        check_ok("phase 1", mon)
    msgs = list(mon.msgs)
    r, auths, bundles = summary("phase 1", msgs, mon)
    check_ok("phase 1", mon)
    assert len(r) - 1 >= 5, "only %d SVID rotations in %d s" % (len(r) - 1, PHASE1_S)
    assert len(auths) >= 3, "only %d issuing authorities in %d s (%s); want 2 CA rotations" % (len(auths), PHASE1_S, auths)
    # Rotations come at half-life, not just before expiry.
    late = [(a.serial, b.t - a.t) for a, b in zip(r, r[1:]) if b.t - a.t > SVID_TTL - 1]
    assert not late, "SVIDs replaced later than %d s after arrival: %s" % (SVID_TTL - 1, late)


def test_rotation_soak_2_server_restart(c, mon):
    assert mon.stream_error is None, "stream ended: %r" % mon.stream_error
    n0 = len(mon.msgs)
    mon.min_held_margin = None  # report phase 2 on its own
    # Stop just before the agent's next renewal (due 2-3 s after an SVID
    # arrives): the renewal then meets a stopped server.
    cur = mon.latest.serial
    sigil.wait_until(lambda: mon.latest.serial != cur, SVID_TTL + 2, interval=0.05, what="a fresh SVID")
    fresh = mon.latest
    time.sleep(max(0.0, fresh.t + 1.5 - time.time()))
    held = mon.latest
    t_stop = time.time()
    ok, secs, rc = c.stop_server()
    assert ok, "sigil-server did not exit within %.0f s of SIGTERM" % sigil.STOP_GRACE_S
    time.sleep(max(0.0, t_stop + DOWN_S - time.time()))
    t_start = time.time()
    c.start_server()
    t_up = time.time()
    print(
        "\n[soak phase 2] server stopped %.2f s after serial %x arrived (expires in %.2f s); "
        "down %.2f s, healthy again after %.2f s"
        % (t_stop - held.t, held.serial, held.not_after - t_stop, t_start - t_stop, t_up - t_stop)
    )

    t_end = t_up + PHASE2_S
    while time.time() < t_end:
        time.sleep(1)
        check_ok("phase 2", mon, n0)

    msgs = list(mon.msgs[n0:])
    r, auths, bundles = summary("phase 2", [held] + msgs, mon)
    check_ok("phase 2", mon, n0)
    after = [s for s in r if s.t > t_up]
    assert len(after) >= 4, "only %d new SVIDs in %d s after the restart" % (len(after), PHASE2_S)
    # The disk KeyManager kept the CA: the authority that signed the last SVID
    # before the stop is still trusted by the first SVID's bundle after it.
    first = [s for s in r if s.t > t_stop][0]
    roots = {hex_skid(x509.load_der_x509_certificate(d)) for d in sigil.split_der_certs(first.svids[0].bundle)}
    if held.not_after > first.t:
        assert hex_akid(held.leaf) in roots, "the pre-restart authority left the bundle across the restart"
