#!/usr/bin/env bash
# Streamed chat (SSE) benchmark: what the sidecar adds to a streamed completion, beside nginx proxying the
# same stream, in one run.
#
#   backend:  bench/sse_stream.py backend — a fake OpenAI that streams `chat.completion.chunk` events
#             (chunked, `text/event-stream`; the usage event when asked for; `[DONE]`)
#   nginx:    reverse proxy to the backend with upstream keep-alive and `proxy_buffering off` (how nginx
#             is set up for SSE), access log on
#   sidecar:  the production build (scripts/pgo.sh), POST /openai/v1/chat/completions with an agent token
#             and the full policy (bench/policy.yaml: model and max_tokens guards, rate, quota,
#             concurrency, a token budget that settles from the streamed usage): the sidecar asks the
#             upstream for usage, meters every event for it, checks it for the key, and re-frames it
#   ttfb:     STREAMS streams (default 300) one after another on a kept-alive connection, each 3 events
#             2 ms apart (a stream still being generated); time from the request to its first event;
#             the same streams straight to the backend give the baseline. Target: the sidecar adds
#             <= 1 ms (p99).
#   rate:     CONNS streams (default 4) of EVENTS events (default 20 000) at once, as fast as the backend
#             writes; events per second, and the proxy's CPU per event. ROUNDS interleaved rounds (medians).
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-300}
CONNS=${CONNS:-4}
EVENTS=${EVENTS:-20000}
BACKEND=$(free_port); NGINX=$(free_port); P=$(free_port); A=$(free_port)
build_sidecar

write_bench_policy
write_proxy "proxy_buffering off;"
{ policy_conf_head "$P" "$A" "$WORK/state"; cat <<CONF; } > "$WORK/sidecar.yaml"
tools:
  openai: {mode: live, base_url: "http://127.0.0.1:$BACKEND"}
CONF
python3 bench/sse_stream.py backend "$BACKEND" > "$WORK/backend.log" 2>&1 & BACKEND_PID=$!; PIDS+=($BACKEND_PID)
nginx -c "$WORK/proxy.conf" -p "$WORK" & NGINX_PID=$!; PIDS+=($NGINX_PID)
env OPENAI_API_KEY=sk-proj-Q7f9Xk2LmN4pR8sT1vW3yZabcdefghijklmnopqrstuvwxyz0123 SIDECAR_ADMIN_TOKEN=$BENCH_ADMIN \
  "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 & SIDE=$!; PIDS+=($SIDE)
wait_ready "$A"
AGENT=$(bench_agent "$A"); TOKEN=$(bench_token "$A" "$AGENT")

target() { case $1 in direct) echo "127.0.0.1:$BACKEND /v1/chat/completions";; nginx) echo "127.0.0.1:$NGINX /v1/chat/completions";;
  sidecar) echo "127.0.0.1:$P /openai/v1/chat/completions --token $TOKEN";; esac; }
pid_of() { case $1 in direct) echo "$BACKEND_PID";; nginx) echo "$NGINX_PID";; sidecar) echo "$SIDE";; esac; }

for round in $(seq 1 "$ROUNDS"); do
  for who in direct nginx sidecar; do
    # shellcheck disable=SC2046
    python3 bench/sse_stream.py ttfb $(target $who) --streams "$STREAMS" > "$WORK/ttfb-$who.$round.json"
    t1=$(ticks "$(pid_of $who)")
    # shellcheck disable=SC2046
    python3 bench/sse_stream.py rate $(target $who) --conns "$CONNS" --events "$EVENTS" > "$WORK/rate-$who.$round.json"
    t2=$(ticks "$(pid_of $who)")
    python3 -c "print(f'{($t2-$t1)/$(getconf CLK_TCK)/($CONNS*$EVENTS)*1e6:.2f}')" > "$WORK/cpu-$who.$round"
  done
done
cpu_med() { for r in $(seq 1 "$ROUNDS"); do cat "$WORK/cpu-$1.$r"; done | median; }
ok=$(grep -c '"outcome":"ok"' "$WORK/state/access.log" 2>/dev/null || grep -c '"outcome":"ok"' "$WORK/sidecar.log" || true)

REPORT="$OUT/stream-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "SSE streaming benchmark $(date -u +%FT%TZ), $(nproc) cores, $ROUNDS interleaved rounds (medians)"
  echo "time to first event, $STREAMS streams of 3 events 2 ms apart, one kept-alive connection (p50 / p99 us):"
  for who in direct nginx sidecar; do printf "  %-8s %8s / %8s\n" "$who" "$(med ttfb-$who p50_us)" "$(med ttfb-$who p99_us)"; done
  D50=$(med ttfb-direct p50_us); D99=$(med ttfb-direct p99_us)
  echo "added to the first event: sidecar p50 +$(python3 -c "print(round($(med ttfb-sidecar p50_us)-$D50))") us, p99 +$(python3 -c "print(round($(med ttfb-sidecar p99_us)-$D99))") us (target <= 1000 us); nginx p50 +$(python3 -c "print(round($(med ttfb-nginx p50_us)-$D50))") us, p99 +$(python3 -c "print(round($(med ttfb-nginx p99_us)-$D99))") us"
  echo "event rate, $CONNS streams of $EVENTS events at once (events/s, CPU us per event of that process):"
  for who in direct nginx sidecar; do printf "  %-8s %10s  %6s\n" "$who" "$(med rate-$who events_per_s)" "$(cpu_med $who)"; done
  echo "sidecar / nginx events/s: $(python3 -c "print(f'{$(med rate-sidecar events_per_s)/$(med rate-nginx events_per_s):.2f}')")"
  echo "sidecar access-log lines with outcome ok: $ok"
} | tee "$REPORT"
