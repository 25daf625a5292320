# Sourced by the bench scripts: repo root, output folder, a work folder removed on exit with every
# process started into PIDS stopped by PID, and free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
# How the sidecar is built for production (`make release`, scripts/pgo.sh): scripts/release-flags.sh,
# and profile-guided. The relay floor and the upstream ceiling are built with the same flags, without a
# profile.
source scripts/release-flags.sh
SIDECAR_BIN=$PWD/.build/pgo/release/sidecar
build_sidecar() { scripts/pgo.sh >&2; }
# PLAIN_RELEASE=1: the same flags without the profile (one release build, incremental afterwards) — for
# comparing changes while working; recorded figures come from the profile-guided build.
if [[ "${PLAIN_RELEASE:-0}" == 1 ]]; then
  SIDECAR_BIN=$PWD/.build/release/sidecar
  build_sidecar() { swift build "${RELEASE[@]}" --product sidecar >&2; }
fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
