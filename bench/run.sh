#!/usr/bin/env bash
# make bench: signing baselines, node-API mint throughput and Workload API
# fetch latency against real sigil-server and sigil-agent processes on
# loopback. Writes bench/RESULTS.md.
set -euo pipefail
. "$(dirname "$0")/../scripts/loopback.sh"

BUILD=${1:-$(pwd)/build}
BIN=$BUILD/bin
OUT=${BENCH_OUT:-bench/RESULTS.md}
SECS=${BENCH_SECONDS:-8}
WORK=$(mktemp -d /tmp/sigil-bench.XXXXXX)
PORT=${BENCH_PORT:-18181}
ADMIN=$WORK/server/api.sock
WL=$WORK/agent/api.sock
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# utime+stime of a process in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
val() { awk -v k="$1" '$1 == k {print $2}' "$2"; }

echo "bench: signing baselines (one core each)"
"$BIN/bench_sign" 2>/dev/null | tee "$WORK/sign.txt"

mkdir -p "$WORK/server" "$WORK/agent"
write_server_conf "$WORK/server.conf" "$PORT" "$ADMIN" "$WORK/server" WARN memory
"$BIN/sigil-server" run -config "$WORK/server.conf" >"$WORK/server.log" 2>&1 &
SERVER=$!
pids+=($SERVER)
for _ in $(seq 1 100); do
    "$BIN/sigil-server" healthcheck -socketPath "$ADMIN" >/dev/null 2>&1 && break
    sleep 0.1
done
"$BIN/sigil-server" bundle show -socketPath "$ADMIN" >"$WORK/bundle.pem"
sleep 1
SERVER_RSS_IDLE=$(rss_kib $SERVER)

# One agent identity per load thread, each with an entry it may mint.
MINT_THREADS=${BENCH_MINT_THREADS:-4}
pairs=()
for i in $(seq 1 "$MINT_THREADS"); do
    tok=$("$BIN/sigil-server" token generate -socketPath "$ADMIN" -spiffeID "spiffe://example.org/bench-node-$i" |
        sed -n 's/^Token: //p')
    id=$("$BIN/sigil-server" entry create -socketPath "$ADMIN" -parentID "spiffe://example.org/bench-node-$i" \
        -spiffeID "spiffe://example.org/bench/w$i" -selector "unix:uid:$((20000 + i))" |
        sed -n 's/^Entry ID *: *//p')
    pairs+=("$tok:$id")
done
echo "bench: node API mint, $MINT_THREADS agents, batches of 500, ${SECS}s"
c0=$(cpu_ticks $SERVER)
"$BIN/bench_mint" 127.0.0.1 "$PORT" "$WORK/bundle.pem" example.org "$SECS" 500 "${pairs[@]}" | tee "$WORK/mint.txt"
c1=$(cpu_ticks $SERVER)
SERVER_RSS_LOAD=$(rss_kib $SERVER)
HZ=$(getconf CLK_TCK)
MINTED=$(val mint_svids "$WORK/mint.txt")
SERVER_CPU_US_PER_SVID=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$MINTED" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')

# Workload API: an agent with one SVID for this uid.
tok=$("$BIN/sigil-server" token generate -socketPath "$ADMIN" -spiffeID spiffe://example.org/bench-agent |
    sed -n 's/^Token: //p')
"$BIN/sigil-server" entry create -socketPath "$ADMIN" -parentID spiffe://example.org/bench-agent \
    -spiffeID spiffe://example.org/bench/fetcher -selector "unix:uid:$(id -u)" >/dev/null
write_agent_conf "$WORK/agent.conf" "$PORT" "$WL" "$WORK/agent" "$WORK/bundle.pem" INFO memory
"$BIN/sigil-agent" run -config "$WORK/agent.conf" -joinToken "$tok" >"$WORK/agent.log" 2>&1 &
AGENT=$!
pids+=($AGENT)
for _ in $(seq 1 200); do
    "$BIN/sigil-agent" api fetch x509 -socketPath "$WL" >/dev/null 2>&1 && break
    sleep 0.1
done
sleep 1
AGENT_RSS_IDLE=$(rss_kib $AGENT)
AGENT_RSS_PEAK=$AGENT_RSS_IDLE
# One Workload API load run: wl_run OUT METHOD CLIENTS [SAVE_FILE]. Samples
# the agent's peak RSS, and appends the agent's and the server's CPU time per
# call over the same run (clock ticks, so coarse).
wl_run() {
    local out=$1 method=$2 n=$3 a0 a1 s0 s1 bp r
    a0=$(cpu_ticks $AGENT)
    s0=$(cpu_ticks $SERVER)
    "$BIN/bench_fetch" "$WL" "$n" "$SECS" "$method" ${4:+"$4"} >"$out" &
    bp=$!
    while kill -0 $bp 2>/dev/null; do
        r=$(rss_kib $AGENT)
        [ "$r" -gt "$AGENT_RSS_PEAK" ] && AGENT_RSS_PEAK=$r
        sleep 0.5
    done
    wait $bp || true
    a1=$(cpu_ticks $AGENT)
    s1=$(cpu_ticks $SERVER)
    awk -v a=$((a1 - a0)) -v s=$((s1 - s0)) -v hz="$HZ" '$1 == "fetch_total" && $2 > 0 {
        printf "fetch_agent_cpu_us %.1f\nfetch_server_cpu_us %.1f\n", a / hz * 1e6 / $2, s / hz * 1e6 / $2 }' \
        "$out" >>"$out"
    cat "$out"
}
for n in 1 100 1000; do
    echo "bench: Workload API FetchX509SVID, $n concurrent clients, ${SECS}s"
    wl_run "$WORK/fetch_$n.txt" x509 "$n" "$WORK/x509_response.bin"
done
# The floor: a bare server on the same gRPC layer answering with the bytes
# the agent sent, so the difference is sigil's own work per fetch.
FLOOR_SOCK=$WORK/floor.sock
"$BIN/bench_floor" "$FLOOR_SOCK" "$WORK/x509_response.bin" 2>"$WORK/floor.log" &
FLOOR=$!
pids+=($FLOOR)
for _ in $(seq 1 100); do [ -S "$FLOOR_SOCK" ] && break; sleep 0.05; done
for n in 1 100; do
    echo "bench: bare gRPC floor for FetchX509SVID, $n concurrent clients, ${SECS}s"
    f0=$(cpu_ticks $FLOOR)
    "$BIN/bench_fetch" "$FLOOR_SOCK" "$n" "$SECS" x509 >"$WORK/floor_$n.txt"
    f1=$(cpu_ticks $FLOOR)
    awk -v t=$((f1 - f0)) -v hz="$HZ" '$1 == "fetch_total" && $2 > 0 {
        printf "fetch_server_cpu_us %.1f\n", t / hz * 1e6 / $2 }' "$WORK/floor_$n.txt" >>"$WORK/floor_$n.txt"
    cat "$WORK/floor_$n.txt"
done
kill -TERM $FLOOR 2>/dev/null || true
# JWT-SVIDs for the same workload identity: warm = one audience, answered
# from the agent's cache; cold = a new audience per call, so each one is a
# MintJWTSVID round trip to the server; validate = one token checked again
# and again.
for n in 1 100; do
    echo "bench: Workload API FetchJWTSVID, warm cache, $n concurrent clients, ${SECS}s"
    wl_run "$WORK/jwt_warm_$n.txt" jwt-warm "$n"
done
for n in 1 10; do
    echo "bench: Workload API FetchJWTSVID, cold cache (server round trip), $n concurrent clients, ${SECS}s"
    wl_run "$WORK/jwt_cold_$n.txt" jwt-cold "$n"
done
for n in 1 100; do
    echo "bench: Workload API ValidateJWTSVID, $n concurrent clients, ${SECS}s"
    wl_run "$WORK/jwt_validate_$n.txt" validate "$n"
done
echo "bench: entry create -> SVID on an open stream, 100 entries"
/usr/bin/python3 bench/propagation.py "$BUILD" "$ADMIN" "$WL" spiffe://example.org/bench-agent 100 | tee "$WORK/prop.txt"
STORM_N=${BENCH_STORM_ENTRIES:-1000}
STORM_TTL=${BENCH_STORM_TTL:-20}
echo "bench: rotation storm, $STORM_N entries with ${STORM_TTL}s SVIDs"
STORM_RSS_PEAK=$(rss_kib $AGENT)
/usr/bin/python3 bench/propagation.py storm "$BUILD" "$ADMIN" "$WORK/agent.log" spiffe://example.org/bench-agent \
    "$STORM_N" "$STORM_TTL" >"$WORK/storm.txt" &
sp=$!
while kill -0 $sp 2>/dev/null; do
    r=$(rss_kib $AGENT)
    [ "$r" -gt "$STORM_RSS_PEAK" ] && STORM_RSS_PEAK=$r
    sleep 0.5
done
wait $sp || true
cat "$WORK/storm.txt"
if [ -n "${BENCH_HOLD:-}" ]; then
    echo "bench: holding; agent pid $AGENT, socket $WL (Ctrl-C to stop)"
    wait "$AGENT"
fi

SIGN=$WORK/sign.txt
FAST1=$(val sg_ca_sign_svid "$SIGN")
FAST2=$(val sg_ca_sign_svid_2threads "$SIGN")
MINT_RATE=$(val mint_svids_per_s "$WORK/mint.txt")
JWT_VAL=$(val sg_jwt_validate_es256 "$SIGN")
JWT_SIGN=$(val sg_jwt_sign_es256 "$SIGN")
PKEY_VERIFY=$(val ecdsa_p256_pkey_verify "$SIGN")
JWT_SIGN_US=$(awk -v r="$JWT_SIGN" 'BEGIN { if (r > 0) printf "%.1f", 1e6 / r; else print 0 }')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
    echo "# Benchmark results"
    echo
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) vCPU, $(. /etc/os-release && echo "$PRETTY_NAME"),"
    echo "$(openssl version), $(uname -r). Server, agent and load generators share the same cores."
    echo "Regenerate with \`make bench\` (BENCH_SECONDS=$SECS per run). This VM's speed varies by up to"
    echo "2x between runs (the load generator's own cost per call moves with it), so compare figures"
    echo "within one run, e.g. as the ratios below, rather than across runs."
    echo
    echo "## Signing baselines (one core, same run)"
    echo
    echo "| loop | rate |"
    echo "|---|---|"
    awk '{printf "| %s | %s %s |\n", $1, $2, $3}' "$SIGN"
    echo
    echo "## X509-SVIDs minted through the node API (mTLS, batches of 500, $MINT_THREADS agents)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| SVIDs/s end to end | $MINT_RATE |"
    echo "| server CPU per SVID | ${SERVER_CPU_US_PER_SVID} µs |"
    echo "| ratio to the fastest build-and-sign loop, one core ($FAST1/s) | $(ratio "$MINT_RATE" "$FAST1") |"
    echo "| ratio to the same loop on two threads ($FAST2/s) | $(ratio "$MINT_RATE" "$FAST2") |"
    echo
    echo "## Workload API FetchX509SVID (first message, new call each time)"
    echo
    echo "| concurrent clients | fetches/s | p50 | p99 | p99.9 | failures | agent CPU per fetch | load generator CPU per fetch |"
    echo "|---|---|---|---|---|---|---|---|"
    for n in 1 100 1000; do
        f=$WORK/fetch_$n.txt
        echo "| $n | $(val fetch_per_s "$f") | $(val fetch_p50_us "$f") µs | $(val fetch_p99_us "$f") µs | $(val fetch_p999_us "$f") µs | $(val fetch_failures "$f") | $(val fetch_agent_cpu_us "$f") µs | $(val fetch_client_cpu_us "$f") µs |"
    done
    echo
    echo "Closed loop: each client starts its next call when the first message of the last one"
    echo "arrived, so at C clients the mean latency is about C / (fetches/s), and the fetch rate is"
    echo "bounded by the CPU the agent and the load generator spend per fetch together (the two"
    echo "columns on the right) on the shared cores."
    echo
    echo "The same load against a bare server on the same gRPC core layer (\`bench_floor\`: one"
    echo "CQ thread answering every FetchX509SVID at once with the bytes the agent sent, with no"
    echo "caller identification, attestation or cache), in the same run:"
    echo
    echo "| concurrent clients | fetches/s | p50 | p99 | p99.9 | server CPU per fetch | sigil-agent ÷ floor, fetches/s | sigil-agent ÷ floor, CPU per fetch |"
    echo "|---|---|---|---|---|---|---|---|"
    for n in 1 100; do
        f=$WORK/floor_$n.txt
        a=$WORK/fetch_$n.txt
        echo "| $n | $(val fetch_per_s "$f") | $(val fetch_p50_us "$f") µs | $(val fetch_p99_us "$f") µs | $(val fetch_p999_us "$f") µs | $(val fetch_server_cpu_us "$f") µs | $(ratio "$(val fetch_per_s "$a")" "$(val fetch_per_s "$f")") | $(ratio "$(val fetch_agent_cpu_us "$a")" "$(val fetch_server_cpu_us "$f")") |"
    done
    echo
    echo "## Workload API JWT-SVIDs (unary calls, new call each time)"
    echo
    echo "| call | concurrent clients | calls/s | p50 | p99 | failures | agent CPU per call | server CPU per call | load generator CPU per call |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for run in "FetchJWTSVID, warm cache:jwt_warm:1 100" "FetchJWTSVID, cold cache (server mint):jwt_cold:1 10" \
        "ValidateJWTSVID:jwt_validate:1 100"; do
        label=${run%%:*}
        rest=${run#*:}
        for n in ${rest#*:}; do
            f=$WORK/${rest%%:*}_$n.txt
            echo "| $label | $n | $(val fetch_per_s "$f") | $(val fetch_p50_us "$f") µs | $(val fetch_p99_us "$f") µs | $(val fetch_failures "$f") | $(val fetch_agent_cpu_us "$f") µs | $(val fetch_server_cpu_us "$f") µs | $(val fetch_client_cpu_us "$f") µs |"
        done
    done
    echo
    echo "Warm: the same audience every call, so after the first the agent answers from its"
    echo "JWT-SVID cache. Cold: a new audience every call, so every call misses the cache and the"
    echo "agent mints the token through the server's node API (MintJWTSVID over mTLS) before it"
    echo "answers. ValidateJWTSVID: one ES256 token, fetched before the run, validated by the agent"
    echo "against its own bundle on every call. Server CPU per call covers the whole server process"
    echo "(near zero unless the call reaches it). Each cold token is a node API call of its own"
    echo "(the X.509 mints above come 500 to a call), so the server's CPU per cold token is mostly"
    echo "per-call cost (mTLS, authenticating the agent, the call itself) rather than the ES256"
    echo "signature (sg_jwt_sign_es256 above). The runs come before the propagation runs below, so"
    echo "the load generator's uid has exactly one identity; with more, one FetchJWTSVID without a"
    echo "spiffe_id answers (and on a cold cache mints) a token for each."
    echo
    echo "| ratio (same run) | value |"
    echo "|---|---|"
    echo "| ValidateJWTSVID/s through the Workload API, 1 client ÷ sg_jwt_validate in process, one core ($JWT_VAL/s) | $(ratio "$(val fetch_per_s "$WORK/jwt_validate_1.txt")" "$JWT_VAL") |"
    echo "| ValidateJWTSVID/s through the Workload API, 100 clients ÷ sg_jwt_validate in process | $(ratio "$(val fetch_per_s "$WORK/jwt_validate_100.txt")" "$JWT_VAL") |"
    echo "| sg_jwt_validate in process ÷ bare ECDSA P-256 verification of a 32-byte digest ($PKEY_VERIFY/s) | $(ratio "$JWT_VAL" "$PKEY_VERIFY") |"
    echo "| FetchJWTSVID p50, cold ÷ warm, 1 client | $(ratio "$(val fetch_p50_us "$WORK/jwt_cold_1.txt")" "$(val fetch_p50_us "$WORK/jwt_warm_1.txt")") |"
    echo "| FetchJWTSVID p99, cold ÷ warm, 1 client | $(ratio "$(val fetch_p99_us "$WORK/jwt_cold_1.txt")" "$(val fetch_p99_us "$WORK/jwt_warm_1.txt")") |"
    echo "| FetchJWTSVID calls/s, cold ÷ warm, 1 client | $(ratio "$(val fetch_per_s "$WORK/jwt_cold_1.txt")" "$(val fetch_per_s "$WORK/jwt_warm_1.txt")") |"
    echo "| FetchJWTSVID calls/s, cold with 10 clients ÷ warm with 100 | $(ratio "$(val fetch_per_s "$WORK/jwt_cold_10.txt")" "$(val fetch_per_s "$WORK/jwt_warm_100.txt")") |"
    echo "| FetchJWTSVID warm calls/s ÷ FetchX509SVID fetches/s, 100 clients | $(ratio "$(val fetch_per_s "$WORK/jwt_warm_100.txt")" "$(val fetch_per_s "$WORK/fetch_100.txt")") |"
    echo "| server CPU per cold FetchJWTSVID, 10 clients ÷ one sg_jwt_sign ES256 in process ($JWT_SIGN_US µs) | $(ratio "$(val fetch_server_cpu_us "$WORK/jwt_cold_10.txt")" "$JWT_SIGN_US") |"
    echo
    echo "## Propagation and rotation"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| entry create → new SVID on an open FetchX509SVID stream, p50 / p99 / max over $(val propagation_entries "$WORK/prop.txt") entries | $(val propagation_p50_ms "$WORK/prop.txt") / $(val propagation_p99_ms "$WORK/prop.txt") / $(val propagation_max_ms "$WORK/prop.txt") ms |"
    echo "| rotation storm: $(val storm_entries "$WORK/storm.txt") entries, $(val storm_ttl_s "$WORK/storm.txt") s SVIDs minted together; re-mints spread over | $(val storm_remint_spread_s "$WORK/storm.txt") s |"
    echo "| storm: re-minted after (min / max) | $(val storm_remint_after_s_min "$WORK/storm.txt") / $(val storm_remint_after_s_max "$WORK/storm.txt") s |"
    echo "| storm: peak agent RSS | $((STORM_RSS_PEAK / 1024)) MiB |"
    echo
    echo "The agent re-mints at half an SVID's remaining lifetime +-5 %, counted in whole seconds"
    echo "(X.509 validity has one-second resolution), so with 20 s SVIDs a re-mint lands 8-11 s after"
    echo "the first; with hour-scale TTLs that second is noise. Jitter spreads the storm's re-mints."
    echo
    echo "## Memory (RSS)"
    echo
    echo "| process | idle | under load |"
    echo "|---|---|---|"
    echo "| sigil-server | $((SERVER_RSS_IDLE / 1024)) MiB | $((SERVER_RSS_LOAD / 1024)) MiB (after the mint run) |"
    echo "| sigil-agent | $((AGENT_RSS_IDLE / 1024)) MiB | $((AGENT_RSS_PEAK / 1024)) MiB (peak during fetch runs) |"
} >"$OUT"
echo "bench: wrote $OUT"
cat "$OUT"
