#!/usr/bin/env bash
# The quickstart: a sigil-server and a sigil-agent on loopback with SQLite in a
# temp dir; a workload (this shell's uid) is registered and fetches its
# X509-SVID through the Workload API; openssl verifies it; everything stops.
set -euo pipefail
. "$(dirname "$0")/loopback.sh"

BUILD=${1:-$(pwd)/build}
BIN=$BUILD/bin
WORK=$(mktemp -d /tmp/sigil-demo.XXXXXX)
PORT=${SIGIL_DEMO_PORT:-18081}
ADMIN=$WORK/server/api.sock
WL=$WORK/agent/api.sock
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

mkdir -p "$WORK/server" "$WORK/agent"
write_server_conf "$WORK/server.conf" "$PORT" "$ADMIN" "$WORK/server" INFO disk

step "Starting sigil-server (trust domain example.org, 127.0.0.1:$PORT, SQLite in $WORK)"
"$BIN/sigil-server" run -config "$WORK/server.conf" >"$WORK/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    "$BIN/sigil-server" healthcheck -socketPath "$ADMIN" >/dev/null 2>&1 && break
    sleep 0.1
done
"$BIN/sigil-server" healthcheck -socketPath "$ADMIN"
"$BIN/sigil-server" bundle show -socketPath "$ADMIN" >"$WORK/agent/bootstrap.pem"

step "Generating a join token for the agent"
TOKEN=$("$BIN/sigil-server" token generate -socketPath "$ADMIN" -spiffeID spiffe://example.org/demo-node \
    | sed -n 's/^Token: //p')
echo "Token: (generated, not shown)"

write_agent_conf "$WORK/agent.conf" "$PORT" "$WL" "$WORK/agent" "$WORK/agent/bootstrap.pem" INFO disk

step "Registering spiffe://example.org/demo-workload for uid $(id -u)"
"$BIN/sigil-server" entry create -socketPath "$ADMIN" -parentID spiffe://example.org/demo-node \
    -spiffeID spiffe://example.org/demo-workload -selector "unix:uid:$(id -u)"

step "Starting sigil-agent (attests with the join token)"
"$BIN/sigil-agent" run -config "$WORK/agent.conf" -joinToken "$TOKEN" >"$WORK/agent.log" 2>&1 &
pids+=($!)

step "Fetching the workload's X509-SVID through the Workload API"
ok=0
for _ in $(seq 1 150); do
    if "$BIN/sigil-agent" api fetch x509 -socketPath "$WL" -write "$WORK/svid" >"$WORK/fetch.out" 2>&1; then
        ok=1
        break
    fi
    sleep 0.1
done
cat "$WORK/fetch.out"
if [ $ok -ne 1 ]; then
    echo "demo: the workload did not receive an SVID; logs:" >&2
    tail -n 30 "$WORK/server.log" "$WORK/agent.log" >&2
    exit 1
fi

step "Verifying the SVID against the trust bundle with openssl"
openssl verify -CAfile "$WORK/svid/bundle.0.pem" -untrusted "$WORK/svid/svid.0.pem" "$WORK/svid/svid.0.pem"

step "The SVID"
openssl x509 -in "$WORK/svid/svid.0.pem" -noout -subject -issuer -serial -dates -ext subjectAltName,keyUsage,extendedKeyUsage,basicConstraints

step "Fetching a JWT-SVID for audience demo-audience and validating it through the agent"
"$BIN/sigil-agent" api fetch jwt -socketPath "$WL" -audience demo-audience >"$WORK/jwt.out"
sed -n 's/^\(token(.*)\):.*/\1: (printed in full by the command; not shown here)/p' "$WORK/jwt.out"
TOKEN_JWT=$(sed -n '2p' "$WORK/jwt.out" | tr -d '[:space:]')
"$BIN/sigil-agent" api validate jwt -socketPath "$WL" -audience demo-audience -svid "$TOKEN_JWT"

step "Stopping"
cleanup
pids=()
echo "Demo finished; files and logs are in $WORK"
