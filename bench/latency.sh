#!/usr/bin/env bash
# Latency at fixed rates: the figure other gateways publish. The OpenAI chat POST with an agent token and
# the full policy (bench/paths.sh's "chat" row), at constant request rates, open model (rate-load: each
# latency from the request's due time, coordinated omission corrected), beside the same request sent
# straight to the backend and through nginx reverse-proxying it — the same rate, the same run.
#
#   backend:  nginx, one worker, canned answers (bench/common.sh)
#   nginx:    reverse proxy to the backend with upstream keep-alive, access log on
#   sidecar:  the production build, access log on, openai live against the backend, agent token, the
#             full policy (guards, GCRA rate, daily quota, concurrency, token budget) on the embedded store
#   load:     rate-load (this repository), 2 loops, up to 64 connections per loop; at each of RATES
#             (default 1000 5000 10000 req/s) DURATION s after a 1 s warm-up, direct / nginx / sidecar
#             interleaved, ROUNDS rounds (medians); then steps up from the last rate (x1.25) until the
#             sidecar's p99 passes 1 ms, errors, or it cannot keep the rate: the last step that held
#
# "Added" latency = the sidecar's (or nginx's) percentile minus the direct one at the same rate.
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"1000 5000 10000"}
BACKEND=$(free_port); NGINX=$(free_port); P=$(free_port); A=$(free_port)
build_sidecar
swift build "${RELEASE[@]}" --product rate-load >&2
LOAD=.build/release/rate-load

write_backend
write_proxy
write_bench_policy
{ policy_conf_head "$P" "$A" "$WORK/state"; cat <<CONF; } > "$WORK/sidecar.yaml"
tools:
  openai: {mode: live, base_url: "http://127.0.0.1:$BACKEND"}
CONF
nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
nginx -c "$WORK/proxy.conf" -p "$WORK" & PIDS+=($!)
env OPENAI_API_KEY=sk-proj-Q7f9Xk2LmN4pR8sT1vW3yZabcdefghijklmnopqrstuvwxyz0123 SIDECAR_ADMIN_TOKEN=$BENCH_ADMIN \
  "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 & SIDE=$!; PIDS+=($SIDE)
wait_ready "$A"
AGENT=$(bench_agent "$A"); TOKEN=$(bench_token "$A" "$AGENT")
BODY='{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Summarize the benchmark in one word."}]}'

measure() { # target rate round -> $WORK/target.rate.round.json
  local port path extra=()
  case $1 in
    direct) port=$BACKEND; path=/v1/chat/completions ;;
    nginx) port=$NGINX; path=/v1/chat/completions ;;
    sidecar) port=$P; path=/openai/v1/chat/completions; extra=(--header "Authorization: Bearer $TOKEN") ;;
  esac
  "$LOAD" "127.0.0.1:$port" --rate "$2" --seconds "$DURATION" --warmup 1 --method POST --path "$path" \
    --header "Content-Type: application/json" "${extra[@]}" --body "$BODY" > "$WORK/$1.$2.$3.json"
}
bad() { for r in $(seq 1 "$ROUNDS"); do echo $(( $(field "$WORK/$1.$2.$r.json" errors) + $(field "$WORK/$1.$2.$r.json" non_2xx) )); done | sort -n | tail -1; }

code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/openai/v1/chat/completions" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$BODY")
[[ "$code" == 200 ]] || { echo "the sidecar answers $code; see $WORK/sidecar.log" >&2; exit 1; }

for rate in $RATES; do for round in $(seq 1 "$ROUNDS"); do for t in direct nginx sidecar; do measure "$t" "$rate" "$round"; done; done; done

# The highest rate the sidecar holds with p99 <= 1 ms: among the fixed rates (their median), then, when it
# held the last of them, in x1.25 steps above it (one round per step).
HELD=""
for rate in $RATES; do
  (( $(med "sidecar.$rate" p99_us) <= 1000 )) || break
  HELD=$rate
done
PEAK=${HELD:+$HELD req/s (p99 $(med "sidecar.$HELD" p99_us) us)}; PEAK_FAIL=""; STEP=${RATES##* }
[[ "$HELD" == "$STEP" ]] && STEPS=12 || STEPS=0
for _ in $(seq 1 "$STEPS"); do
  STEP=$(python3 -c "print(int($STEP * 1.25))")
  measure sidecar "$STEP" peak
  p99=$(field "$WORK/sidecar.$STEP.peak.json" p99_us); got=$(field "$WORK/sidecar.$STEP.peak.json" achieved_rps)
  errs=$(( $(field "$WORK/sidecar.$STEP.peak.json" errors) + $(field "$WORK/sidecar.$STEP.peak.json" non_2xx) ))
  if (( p99 > 1000 || errs > 0 )) || python3 -c "import sys; sys.exit(0 if $got < 0.98 * $STEP else 1)"; then
    PEAK_FAIL="$STEP req/s: p99 $p99 us, $errs errors, $got req/s achieved"; break
  fi
  PEAK="$STEP req/s (p99 $p99 us)"
done

REPORT="$OUT/latency-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "latency at fixed rates $(date -u +%FT%TZ), $(nproc) cores, $( [[ "${PLAIN_RELEASE:-0}" == 1 ]] && echo plain || echo profile-guided ) release, chat POST with agent token and full policy, rate-load open model, ${DURATION}s per point after 1 s warm-up, $ROUNDS rounds (medians)"
  printf "%-8s %-8s %8s %8s %8s %8s %9s %6s\n" rate target p50_us p90_us p99_us p999_us "added99" bad
  for rate in $RATES; do
    d99=$(med "direct.$rate" p99_us)
    for t in direct nginx sidecar; do
      p99=$(med "$t.$rate" p99_us)
      printf "%-8s %-8s %8s %8s %8s %8s %9s %6s\n" "$rate" "$t" "$(med "$t.$rate" p50_us)" "$(med "$t.$rate" p90_us)" "$p99" \
        "$(med "$t.$rate" p999_us)" "$( [[ $t == direct ]] && echo - || echo $((p99 - d99)) )" "$(bad "$t" "$rate")"
    done
  done
  first=${RATES%% *}
  echo "added p99 at $first req/s: sidecar $(( $(med "sidecar.$first" p99_us) - $(med "direct.$first" p99_us) )) us, nginx $(( $(med "nginx.$first" p99_us) - $(med "direct.$first" p99_us) )) us (target: sidecar <= 300 us)"
  echo "highest rate held with sidecar p99 <= 1 ms (the fixed rates, then x1.25 steps above ${RATES##* } when it held that): ${PEAK:-none of the fixed rates}${PEAK_FAIL:+; next step $PEAK_FAIL}"
} | tee "$REPORT"
