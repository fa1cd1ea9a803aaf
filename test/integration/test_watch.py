"""`sigil-agent api watch`: every X509-SVID update printed as it arrives.

The watcher is started before its workload is registered: it waits (the
agent answers PermissionDenied until then), prints the first SVID once the
entry exists, prints again when the entry changes, and leaves with 0 on
SIGTERM/SIGINT.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import sigil


WATCH_ID = sigil.TD_ID + "/watch/workload"
# Retries back off up to 10 s, and the agent may take a sync period (~5 s)
# to learn about a change: deadlines, never fixed sleeps.
FIRST_UPDATE_S = 40
NEXT_UPDATE_S = 40

UPDATE_RE = re.compile(
    r"Received (\d+) svid after [0-9.]+ms\n\n"
    r"SPIFFE ID:\t+(\S+)\n"
    r"(?:.+\n)*?"
    r"Serial number:\t+([0-9a-f]+)\n"
    r"(?:.+\n)*?"
    r"CA #1 Valid Until:\t.+\n"
    r"(?:.+\n)*?"
    r"\n"
)


class Watcher:
    """`sigil-agent api watch` with its stdout and stderr read by threads."""

    def __init__(self, sock, *args, env=None):
        """sock None: no -socketPath (SPIFFE_ENDPOINT_SOCKET from env)."""
        cmd = [sigil.AGENT_BIN, "api", "watch"] + (["-socketPath", sock] if sock else [])
        self.proc = subprocess.Popen(
            cmd + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.cond = threading.Condition()
        self.out = []  # (monotonic time, line)
        self.err = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, f, dest):
        for raw in iter(f.readline, b""):
            with self.cond:
                dest.append((time.monotonic(), raw.decode(errors="replace")))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def stdout(self):
        with self.cond:
            return "".join(line for _, line in self.out)

    def stderr(self):
        with self.cond:
            return "".join(line for _, line in self.err)

    def first_output_time(self):
        with self.cond:
            return self.out[0][0] if self.out else None

    def wait_for(self, fn, timeout, what):
        """Waits until fn() is true (re-checked on every line); returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = fn()
                if v:
                    return v
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._threads):
                    raise AssertionError(
                        "api watch exited with %s before %s\nstdout:\n%s\nstderr:\n%s"
                        % (self.proc.returncode, what, self._text(self.out), self._text(self.err))
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "no %s within %ds\nstdout:\n%s\nstderr:\n%s"
                        % (what, timeout, self._text(self.out), self._text(self.err))
                    )
                self.cond.wait(min(left, 0.5))

    @staticmethod
    def _text(lines):
        return "".join(line for _, line in lines)

    def updates(self):
        """[(n_svids, spiffe_id, serial)] of every complete update so far."""
        return [(int(m.group(1)), m.group(2), m.group(3)) for m in UPDATE_RE.finditer(self._text(self.out))]

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        """Sends sig; returns (rc, seconds) or fails when it outlives grace."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("api watch did not exit within %.0fs of %s" % (grace, sig.name))
        for t in self._threads:
            t.join(5)
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def watchers():
    started = []
    yield started
    for w in started:
        w.kill()


def test_watch_prints_each_update_as_it_arrives(cluster, agent, watchers):
    w = Watcher(agent.sock)
    watchers.append(w)

    # Not registered yet: the agent refuses, the watcher says so and keeps waiting.
    w.wait_for(lambda: "code = PermissionDenied" in w._text(w.err), 20, "PermissionDenied from the agent")
    assert w.proc.poll() is None, "api watch gave up on PermissionDenied: %s" % w.stderr()
    assert w.stdout() == "", "output before any entry existed:\n" + w.stdout()

    parent = agent.spiffe_id
    selector = "unix:uid:%d" % os.getuid()
    t_create = time.monotonic()
    eid = cluster.create_entry(WATCH_ID, parent, [selector])

    first = w.wait_for(w.updates, FIRST_UPDATE_S, "first SVID update after `entry create`")
    assert w.first_output_time() >= t_create
    assert first[0][0] == 1 and first[0][1] == WATCH_ID, w.stdout()
    for line in ("SVID Valid After:", "SVID Valid Until:", "CA #1 Valid After:"):
        assert line in w.stdout(), w.stdout()
    n_before = len(first)
    serial_before = first[-1][2]

    r = cluster.server_cli(
        "entry update",
        "-entryID",
        eid,
        "-spiffeID",
        WATCH_ID,
        "-parentID",
        parent,
        "-selector",
        selector,
        "-dns",
        "watch.example.org",
    )
    assert r.returncode == 0, r.out

    later = w.wait_for(
        lambda: [u for u in w.updates()[n_before:] if u[2] != serial_before],
        NEXT_UPDATE_S,
        "second SVID update after `entry update`",
    )
    assert later[0][0] == 1 and later[0][1] == WATCH_ID, w.stdout()

    rc, secs = w.stop(signal.SIGTERM)
    assert rc == 0, "api watch exited %s on SIGTERM\nstderr:\n%s" % (rc, w.stderr())
    assert secs < 5.0


def test_watch_json_one_object_per_line(cluster, agent, watchers):
    # The entry of the test above may not exist when this runs alone.
    try:
        cluster.entry_id(WATCH_ID, agent.spiffe_id)
    except AssertionError:
        cluster.create_entry(WATCH_ID, agent.spiffe_id, ["unix:uid:%d" % os.getuid()])
    w = Watcher(agent.sock, "-output", "json")
    watchers.append(w)
    line = w.wait_for(lambda: [ln for _, ln in w.out], FIRST_UPDATE_S, "a JSON update")[0]
    doc = json.loads(line)
    assert [s["spiffe_id"] for s in doc["svids"]] == [WATCH_ID], line
    assert doc["svids"][0]["x509_svid"] and doc["svids"][0]["bundle"], line
    rc, _ = w.stop(signal.SIGINT)
    assert rc == 0, w.stderr()


def test_watch_retries_unavailable_and_stops_on_sigint(cluster, watchers):
    # SPIFFE_ENDPOINT_SOCKET is resolved like `api fetch` does.
    missing = os.path.join(cluster.dir, "no-agent", "api.sock")
    env = dict(os.environ, SPIFFE_ENDPOINT_SOCKET="unix://" + missing)
    w = Watcher(None, env=env)
    watchers.append(w)
    # Backoff starts at 1 s: a second attempt comes, each one reported once.
    w.wait_for(lambda: w._text(w.err).count("code = Unavailable") >= 2, 10, "two Unavailable attempts")
    assert w.proc.poll() is None
    rc, _ = w.stop(signal.SIGINT)
    assert rc == 0, w.stderr()
    assert w.stdout() == ""
