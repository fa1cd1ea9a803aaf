#!/usr/bin/env bash
# Installs the Debian packages sigil needs to build, run and test, when any is missing.
set -euo pipefail

PKGS=(
    build-essential pkg-config openssl ca-certificates
    libssl-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev
    libuv1-dev libsqlite3-dev libjansson-dev libcurl4-openssl-dev libhttp-parser-dev
    protobuf-compiler python3 python3-grpcio python3-protobuf python3-cryptography python3-jwt python3-pytest
)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all packages present"
    exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
