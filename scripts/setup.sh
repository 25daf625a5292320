#!/usr/bin/env bash
# Installs what the sidecar, its tests and its benchmarks need on a fresh Debian 12 machine.
# Idempotent: packages already present are not touched.
set -euo pipefail

APT_PACKAGES=(libhiredis-dev libjemalloc-dev redis-server curl prometheus libsqlite3-dev python3-venv zlib1g-dev pkg-config)
[[ "${WITH_BENCH:-0}" == "1" ]] && APT_PACKAGES+=(wrk nginx-light)

SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# package[:module] — the scenarios' load generator and report (aiohttp, hdrhistogram, matplotlib) too.
PY_PACKAGES=(openai requests pytest cryptography joserfc httpx h2 redis aiohttp hdrhistogram:hdrh matplotlib)
py_missing=()
for entry in "${PY_PACKAGES[@]}"; do
  p=${entry%%:*}; module=${entry#*:}
  python3 -c "import ${module}" >/dev/null 2>&1 || py_missing+=("$p")
done
if (( ${#py_missing[@]} )); then
  echo "setup: pip installing ${py_missing[*]}" >&2
  python3 -m pip install -q "${py_missing[@]}"
fi
