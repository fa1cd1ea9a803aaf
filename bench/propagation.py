#!/usr/bin/python3
"""Entry-to-workload propagation and rotation-storm figures for `make bench`.

  propagation.py BUILD SERVER_SOCKET AGENT_SOCKET PARENT_ID N
      Opens one FetchX509SVID stream (grpcio, the caller is this process's
      uid), then N times: `sigil-server entry create` for a new SPIFFE ID
      matching this uid, and times from the CLI's return to the first stream
      message holding that ID. Prints p50/p99/max in ms.

  propagation.py storm BUILD SERVER_SOCKET AGENT_LOG PARENT_ID N TTL
      Registers N entries with -x509SVIDTTL TTL in one `entry create -data`
      call when available (else one call each), waits for the agent to mint
      them all, then for every one to be re-minted, reading the agent's
      "minted X509-SVID" log lines. Prints how long the re-mint wave took and
      how it was spread.
"""

import calendar
import json
import os
import subprocess
import sys
import threading
import time

import grpc


def load_workload_pb(build):
    sys.path.insert(0, os.path.join(build, "py"))
    from spiffe import workload_pb2  # noqa: E402

    return workload_pb2


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def cli(build, *args):
    r = subprocess.run([os.path.join(build, "bin", "sigil-server"), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("sigil-server %s failed: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r.stdout


def propagation(build, admin, agent_sock, parent, n):
    pb = load_workload_pb(build)
    ch = grpc.insecure_channel("unix:" + agent_sock)
    call = ch.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=pb.X509SVIDRequest.SerializeToString,
        response_deserializer=pb.X509SVIDResponse.FromString,
    )
    uid = os.getuid()
    seen = {}
    cond = threading.Condition()
    tag = "%d" % time.time_ns()

    def reader():
        try:
            for resp in call(pb.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)):
                now = time.monotonic()
                with cond:
                    for s in resp.svids:
                        seen.setdefault(s.spiffe_id, now)
                    cond.notify_all()
        except grpc.RpcError:
            pass

    # A first entry so the stream opens with an identity.
    cli(build, "entry", "create", "-socketPath", admin, "-parentID", parent,
        "-spiffeID", "spiffe://example.org/prop/%s/base" % tag, "-selector", "unix:uid:%d" % uid)
    threading.Thread(target=reader, daemon=True).start()
    with cond:
        if not cond.wait_for(lambda: any(k.endswith("/base") for k in seen), timeout=30):
            raise SystemExit("propagation: the base SVID never arrived")
    lat = []
    for i in range(n):
        sid = "spiffe://example.org/prop/%s/%d" % (tag, i)
        cli(build, "entry", "create", "-socketPath", admin, "-parentID", parent, "-spiffeID", sid,
            "-selector", "unix:uid:%d" % uid)
        t0 = time.monotonic()
        with cond:
            if not cond.wait_for(lambda: sid in seen, timeout=30):
                raise SystemExit("propagation: %s never arrived" % sid)
            lat.append((seen[sid] - t0) * 1000)
    ch.close()
    print("propagation_entries %d" % n)
    print("propagation_p50_ms %.1f" % percentile(lat, 0.5))
    print("propagation_p99_ms %.1f" % percentile(lat, 0.99))
    print("propagation_max_ms %.1f" % max(lat))


def minted_times(log_path, prefix):
    """Log times of the agent's 'minted X509-SVID <id>' lines, per ID starting with prefix."""
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            if "minted X509-SVID " not in line:
                continue
            sid = line.split("minted X509-SVID ", 1)[1].split(" ", 1)[0]
            if not sid.startswith(prefix):
                continue
            ts = line.split(" ", 1)[0]
            t = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float(ts[19:23])
            out.setdefault(sid, []).append(t)
    return out


def storm(build, admin, agent_log, parent, n, ttl):
    uid = os.getuid()
    tag = "%d" % time.time_ns()
    prefix = "spiffe://example.org/storm/%s/" % tag
    data = {"entries": [{"spiffe_id": prefix + str(i), "parent_id": parent, "x509_svid_ttl": ttl,
                         "selectors": [{"type": "unix", "value": "uid:%d" % (uid + 100000 + i)}]}
                        for i in range(n)]}
    path = "/tmp/sigil-storm-%s.json" % tag
    with open(path, "w") as f:
        json.dump(data, f)
    r = subprocess.run([os.path.join(build, "bin", "sigil-server"), "entry", "create", "-socketPath", admin,
                        "-data", path], capture_output=True, text=True)
    os.unlink(path)
    if r.returncode != 0:
        for e in data["entries"]:
            cli(build, "entry", "create", "-socketPath", admin, "-parentID", parent, "-spiffeID", e["spiffe_id"],
                "-selector", "unix:" + e["selectors"][0]["value"], "-x509SVIDTTL", str(ttl))
    deadline = time.time() + 60 + 3 * ttl
    while time.time() < deadline:
        m = minted_times(agent_log, prefix)
        if len(m) == n and all(len(v) >= 2 for v in m.values()):
            break
        time.sleep(0.5)
    m = minted_times(agent_log, prefix)
    first = [v[0] for v in m.values()]
    second = [v[1] for v in m.values() if len(v) >= 2]
    if len(second) < n:
        raise SystemExit("storm: only %d of %d SVIDs were re-minted" % (len(second), n))
    print("storm_entries %d" % n)
    print("storm_ttl_s %d" % ttl)
    print("storm_first_mint_spread_s %.2f" % (max(first) - min(first)))
    print("storm_remint_spread_s %.2f" % (max(second) - min(second)))
    print("storm_remint_after_s_min %.2f" % min(b - a for a, b in zip(first, second)))
    print("storm_remint_after_s_max %.2f" % max(b - a for a, b in zip(first, second)))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "storm":
        _, _, build, admin, log, parent, n, ttl = sys.argv
        storm(build, admin, log, parent, int(n), int(ttl))
    else:
        _, build, admin, agent_sock, parent, n = sys.argv
        propagation(build, admin, agent_sock, parent, int(n))


if __name__ == "__main__":
    main()
