#!/usr/bin/env bash
# Runs every chaos experiment (or those named: chaos/run.sh 01 03) and prints a summary.
# Uses $SIDECAR_BIN, else .build/pgo/release/sidecar (make release), else .build/debug/sidecar.
set -u
cd "$(dirname "$0")"
status=0
summary=()
for script in 0*.py; do
  if [ $# -gt 0 ]; then
    match=0
    for want in "$@"; do [[ "$script" == "$want"* ]] && match=1; done
    [ $match -eq 1 ] || continue
  fi
  out=$(timeout 300 python3 "$script" 2>&1)
  rc=$?
  echo "$out"
  line=$(echo "$out" | grep -E '^(PASS|FAIL) ' | tail -1)
  summary+=("${line:-FAIL $script (exit $rc, no verdict)}")
  [ $rc -eq 0 ] || status=1
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
