#!/usr/bin/env bash
# Agent runs benchmark, one run of it:
#
#   1. Proxied req/s with a run id on every call vs without: the same sidecar (production build, embedded
#      store, agent token, bench/paths.sh's full policy), the same requests (every query or body distinct,
#      so the loop breaker sees a working agent, as it would), one row with `X-Run-Id` on every call.
#      Each run call is reserved on the run's ledger, settled from its answer and written to the run's
#      stream (SQLite). Target: >= 0.9x.
#   2. SSE fan-out: 100 event streams open on one run (bench/sse_fanout.py), tool calls in that run one
#      after another; for each call and each stream, the time from the agent holding its answer to the
#      stream holding the call's event. Target: p99 < 50 ms.
#
#   backend: nginx with canned SerpAPI and chat answers; load: wrk -t2 -c64, DURATION s, ROUNDS
#   interleaved rounds (medians).
source "$(dirname "$0")/common.sh"
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-100}
CALLS=${CALLS:-300}
BACKEND=$(free_port); P=$(free_port); A=$(free_port)
build_sidecar

write_backend
write_bench_policy
{ policy_conf_head "$P" "$A" "$WORK/state"; cat <<CONF; } > "$WORK/sidecar.yaml"
admin: {rate_limit: {per_second: 100000, burst: 100000}}
runs: {max_streams_per_run: 1000}
tools:
  serpapi: {mode: live, base_url: "http://127.0.0.1:$BACKEND", cache_ttl: 0s}
  openai: {mode: live, base_url: "http://127.0.0.1:$BACKEND"}
CONF
nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
ADMIN=$BENCH_ADMIN
env SERPAPI_API_KEY=bench-serp-key OPENAI_API_KEY=sk-bench-key SIDECAR_ADMIN_TOKEN=$ADMIN \
  "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 & SIDE=$!; PIDS+=($SIDE)
wait_ready "$A"
H=(-H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json')
AGENT=$(bench_agent "$A"); TOKEN=$(bench_token "$A" "$AGENT")
new_run() {
  local id; id=$(curl -fs -X POST "http://127.0.0.1:$A/api/runs" "${H[@]}" -d "{\"name\":\"bench\",\"agent_id\":\"$AGENT\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -fs -X POST "http://127.0.0.1:$A/api/runs/$id/start" "${H[@]}" >/dev/null
  echo "$id"
}
RUN=$(new_run)

# Every request distinct (a counter in the query or the prompt), with or without the run header.
script() { # name tool [run]
  {
    echo 'counter = 0'
    echo "wrk.headers[\"Authorization\"] = \"Bearer $TOKEN\""
    [[ -n "${3:-}" ]] && echo "wrk.headers[\"X-Run-Id\"] = \"$3\""
    if [[ "$2" == serpapi ]]; then
      echo 'request = function() counter = counter + 1; return wrk.format("GET", "/serpapi/search?q=bench" .. counter .. "&num=10") end'
    else
      echo 'wrk.headers["Content-Type"] = "application/json"'
      echo 'request = function() counter = counter + 1; return wrk.format("POST", "/openai/v1/chat/completions", nil, '\
'"{\"model\":\"gpt-4o-mini\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"Summarize benchmark " .. counter .. "\"}]}") end'
    fi
  } > "$WORK/$1.lua"
}
ROWS="serpapi serpapi-run chat chat-run"
script serpapi serpapi; script serpapi-run serpapi "$RUN"; script chat openai; script chat-run openai "$RUN"
for r in $ROWS; do
  code=$(wrk -t1 -c1 -d1s -s "$WORK/$r.lua" "http://127.0.0.1:$P" 2>&1 | awk '/Non-2xx/ {print "non-2xx"}')
  [[ -z "$code" ]] || { echo "row $r answers non-2xx; see $WORK/sidecar.log" >&2; tail -3 "$WORK/sidecar.log" >&2; exit 1; }
done

for round in $(seq 1 "$ROUNDS"); do for r in $ROWS; do run_wrk "$r" "$round" "http://127.0.0.1:$P" "$SIDE"; done; done
# Memory after the load, and the CPU the sidecar spends in the 3 s after it (a backlog being written).
RSS_AFTER=$(awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r " kB (anonymous " a " kB)"}' /proc/$SIDE/status)
T0=$(ticks "$SIDE"); sleep 3; T1=$(ticks "$SIDE")
IDLE_CPU=$(python3 -c "print(f'{($T1-$T0)/$(getconf CLK_TCK)/3*100:.0f}')")
LEDGER=$(curl -fs "http://127.0.0.1:$A/api/runs/$RUN" "${H[@]}" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ledger"]["calls"], d["reserved"]["calls"])')

if (( STREAMS > 0 )); then
  FAN_RUN=$(new_run)
  FANOUT=$(python3 bench/sse_fanout.py --admin "http://127.0.0.1:$A" --proxy "http://127.0.0.1:$P" --admin-token "$ADMIN" \
    --token "$TOKEN" --run "$FAN_RUN" --streams "$STREAMS" --calls "$CALLS")
else
  FANOUT="SSE fan-out: not measured (STREAMS=0)"
fi

REPORT="$OUT/runs-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "runs benchmark $(date -u +%FT%TZ), $(nproc) cores, $( [[ "${PLAIN_RELEASE:-0}" == 1 ]] && echo plain || echo profile-guided ) release, embedded store, wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds (medians)"
  printf "%-12s %9s %9s %9s %10s\n" row "req/s" p50 p99 "cpu us/req"
  for r in $ROWS; do
    printf "%-12s %9s %9s %9s %10s   rounds:" "$r" "$(rps "$r")" "$(pct "$r" 50%)" "$(pct "$r" 99%)" "$(cpu "$r")"
    for i in $(seq 1 "$ROUNDS"); do printf " %.0f (%s us, %s cs)" "$(round_rps "$r" "$i")" "$(cat "$WORK/$r.$i.cpu")" "$(cat "$WORK/$r.$i.switches")"; done
    echo
  done
  # The ratio is taken per round (the two rows of a round ran back to back on the same machine state),
  # then its median: this VM's speed drifts between rounds more than the difference measured.
  for t in serpapi chat; do
    ratios=$(for i in $(seq 1 "$ROUNDS"); do python3 -c "print(f'{$(round_rps "$t-run" "$i")/$(round_rps "$t" "$i"):.2f}')"; done)
    echo "with a run id / without ($t): $(echo "$ratios" | median)x, median of the rounds' ratios (target >= 0.9; per round: $(echo $ratios))"
  done
  echo "the run's ledger after the load: calls spent, calls still reserved = $LEDGER"
  echo "sidecar RSS after the load: $RSS_AFTER; CPU in the 3 s after it: $IDLE_CPU %"
  echo "$FANOUT"
  for r in $ROWS; do cat "$WORK/$r".*.txt | awk -v r="$r" '/Non-2xx|Socket errors/ {print r ": " $0}'; done
  true
} | tee "$REPORT"
