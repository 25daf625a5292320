#!/usr/bin/env bash
# Data-plane benchmark: the sidecar vs nginx reverse-proxying to the same fast local backend, in one run.
#
#   backend:  nginx, one worker, `return 200` of a 120-byte JSON body (keep-alive)
#   nginx:    reverse proxy to the backend with upstream keep-alive, access log on (to a file)
#   sidecar:  the production build (profile-guided, scripts/pgo.sh); serpapi reverse route
#             (/serpapi/search?q=...) with base_url = the backend,
#             so every request is classified, interpreted, has its key injected and its headers rewritten;
#             access log on (to a file); authentication off
#   +auth:    a second sidecar, identical but with authentication on: every request carries an agent
#             token (X-Agent-Token) that is checked on the cached path (digest, revocation, agent status)
#   floor:    relay-floor, a bare SwiftNIO HTTP/1.1 relay with none of the sidecar's work (no policy,
#             headers, credentials, resilience, logs or metrics): what any proxy on this stack costs here
#   load:     wrk -t2 -c64 -d${DURATION}s --latency, after a 3 s warm-up, everything on 127.0.0.1;
#             ROUNDS rounds (default 3), each measuring the four in turn, so a burst of noise on this shared
#             VM hits one round of one proxy rather than the whole measurement of it; each figure is the
#             median over the rounds, and the spread of the per-round ratio is printed
#
# Prints req/s, p50 and p99 of each, the ratios, the CPU each proxy spends per request (user+system,
# from /proc, all its threads and workers), and the sidecar's RSS under load.
source "$(dirname "$0")/common.sh"
CONNS=${CONNS:-64}
BACKEND=$(free_port); NGINX=$(free_port); PROXY=$(free_port); ADMIN=$(free_port); PROXY2=$(free_port); ADMIN2=$(free_port); FLOOR=$(free_port)

build_sidecar
swift build "${RELEASE[@]}" --product relay-floor >&2
swift build "${RELEASE[@]}" --product upstream-ceiling >&2

write_backend
cat > "$WORK/proxy.conf" <<CONF
worker_processes auto; pid $WORK/proxy.pid; error_log $WORK/proxy.err; daemon off;
events { worker_connections 4096; }
http { access_log $WORK/nginx-access.log; keepalive_requests 100000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$WORK/sidecar.yaml" <<CONF
version: 1
listen: {proxy: "127.0.0.1:$PROXY", admin: "127.0.0.1:$ADMIN"}
auth: {required: false}
state: {dir: "$WORK/state-off"}
tools:
  serpapi: {mode: live, base_url: "http://127.0.0.1:$BACKEND", cache_ttl: 0s}
CONF
cat > "$WORK/sidecar-auth.yaml" <<CONF
version: 1
listen: {proxy: "127.0.0.1:$PROXY2", admin: "127.0.0.1:$ADMIN2"}
state: {dir: "$WORK/state-on"}
tools:
  serpapi: {mode: live, base_url: "http://127.0.0.1:$BACKEND", cache_ttl: 0s}
CONF

nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
nginx -c "$WORK/proxy.conf" -p "$WORK" & NGINX_PID=$!; PIDS+=($NGINX_PID)
.build/release/relay-floor "$FLOOR" "$BACKEND" > "$WORK/floor.log" 2>&1 & FLOOR_PID=$!; PIDS+=($FLOOR_PID)
SERPAPI_API_KEY=bench-key "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 & SIDECAR=$!; PIDS+=($SIDECAR)
SERPAPI_API_KEY=bench-key "$SIDECAR_BIN" run --config "$WORK/sidecar-auth.yaml" > "$WORK/sidecar-auth.log" 2>&1 & SIDECAR_AUTH=$!; PIDS+=($SIDECAR_AUTH)
wait_ready "$ADMIN" "$ADMIN2"
ADMIN_TOKEN=$(cat "$WORK/state-on/admin.token")
AGENT=$(curl -fs -X POST "http://127.0.0.1:$ADMIN2/api/agents" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","role":"scraper","created_by":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["agent_id"])')
TOKEN=$(curl -fs -X POST "http://127.0.0.1:$ADMIN2/api/agents/$AGENT/tokens" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"ttl":"1h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -fs "http://127.0.0.1:$PROXY2/serpapi/search?q=x" -H "X-Agent-Token: $TOKEN" >/dev/null
curl -fs "http://127.0.0.1:$NGINX/search?q=x" >/dev/null
curl -fs "http://127.0.0.1:$PROXY/serpapi/search?q=x" >/dev/null
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$FLOOR/serpapi/search?q=x" >/dev/null 2>&1 && break; sleep 0.1; done

# CPU ticks: `ticks` in common.sh (a process, its threads and its children, nginx workers).
ROUNDS=${ROUNDS:-3}
run_wrk() { # name round url pid [header]
  local h=(); [[ -n "${5:-}" ]] && h=(-H "$5")
  [[ "$2" == 1 ]] && wrk -t2 -c"$CONNS" -d3s "${h[@]}" "$3" >/dev/null
  local t1; t1=$(ticks "$4")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${h[@]}" "$3" > "$WORK/$1.$2.txt"
  local t2; t2=$(ticks "$4")
  local n; n=$(awk '/requests in/ {print $1}' "$WORK/$1.$2.txt")
  python3 -c "print(f'{($t2-$t1)/$(getconf CLK_TCK)/$n*1e6:.1f}')" > "$WORK/$1.$2.cpu"
}
# round_rps, median, median_round (the round whose latencies are reported), rps, pct, cpu: common.sh.
# min-max over the rounds of (a's req/s / b's req/s) in the same round
spread() { for r in $(seq 1 "$ROUNDS"); do python3 -c "print(f'{$(round_rps "$1" "$r")/$(round_rps "$2" "$r"):.2f}')"; done | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}'; }
errors() { cat "$WORK/$1".*.txt | awk '/Non-2xx|Socket errors/ {print}'; }

( while kill -0 $SIDECAR 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/$SIDECAR/status; sleep 0.5; done ) > "$WORK/rss.txt" &
SAMPLER=$!
for round in $(seq 1 "$ROUNDS"); do
  run_wrk nginx "$round" "http://127.0.0.1:$NGINX/search?q=bench" "$NGINX_PID"
  run_wrk floor "$round" "http://127.0.0.1:$FLOOR/serpapi/search?q=bench" "$FLOOR_PID"
  run_wrk sidecar "$round" "http://127.0.0.1:$PROXY/serpapi/search?q=bench" "$SIDECAR"
  run_wrk sidecar-auth "$round" "http://127.0.0.1:$PROXY2/serpapi/search?q=bench" "$SIDECAR_AUTH" "X-Agent-Token: $TOKEN"
done
kill $SAMPLER 2>/dev/null || true
# Sampled throughout; the maximum is reached in the plain sidecar's own turns under load.
RSS_MAX=$(sort -n "$WORK/rss.txt" | tail -1)
HWM=$(awk '/VmHWM/ {print $2}' /proc/$SIDECAR/status)

NR=$(rps nginx); SR=$(rps sidecar); AR=$(rps sidecar-auth); FR=$(rps floor)
# What each upstream client alone reaches against the same backend: the ceiling of a proxy built on it.
CEIL=$(.build/release/upstream-ceiling "http://127.0.0.1:$BACKEND/search?q=bench" "$CONNS" "$DURATION" ahc)
CEIL_POOL=$(.build/release/upstream-ceiling "http://127.0.0.1:$BACKEND/search?q=bench" "$CONNS" "$DURATION" pool)
RATIO=$(python3 -c "print(f'{$SR/$NR:.2f}')")
REPORT="$OUT/dataplane-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "data-plane benchmark $(date -u +%FT%TZ), $(nproc) cores, wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds (medians)"
  printf "%-8s %10s %10s %10s %14s\n" "" "req/s" "p50" "p99" "cpu us/req"
  printf "%-8s %10s %10s %10s %14s\n" nginx "$NR" "$(pct nginx 50%)" "$(pct nginx 99%)" "$(cpu nginx)"
  printf "%-8s %10s %10s %10s %14s\n" floor "$FR" "$(pct floor 50%)" "$(pct floor 99%)" "$(cpu floor)"
  printf "%-8s %10s %10s %10s %14s\n" sidecar "$SR" "$(pct sidecar 50%)" "$(pct sidecar 99%)" "$(cpu sidecar)"
  printf "%-8s %10s %10s %10s %14s\n" +auth "$AR" "$(pct sidecar-auth 50%)" "$(pct sidecar-auth 99%)" "$(cpu sidecar-auth)"
  echo "ratio sidecar/nginx req/s: $RATIO (target >= 0.7; per round $(spread sidecar nginx))"
  echo "ratio relay-floor/nginx req/s: $(python3 -c "print(f'{$FR/$NR:.2f}')") (a bare NIO relay: the most a proxy on this stack reaches here)"
  echo "ratio auth on/off req/s: $(python3 -c "print(f'{$AR/$SR:.2f}')") (target >= 0.95; per round $(spread sidecar-auth sidecar))"
  echo "clients alone against the same backend (no proxy): async-http-client $CEIL req/s ($(python3 -c "print(f'{$CEIL/$NR:.2f}')")x nginx)," \
    "the sidecar's HTTP/1.1 pool $CEIL_POOL req/s ($(python3 -c "print(f'{$CEIL_POOL/$NR:.2f}')")x nginx)"
  echo "sidecar RSS under load: max sampled ${RSS_MAX} kB, high-water ${HWM} kB"
  errors nginx | sed 's/^/nginx: /'
  errors sidecar | sed 's/^/sidecar: /'
  errors sidecar-auth | sed 's/^/sidecar+auth: /'
  errors floor | sed 's/^/floor: /'
  echo "token verification on one core (sidecar bench tokens):"
  "$SIDECAR_BIN" bench tokens --seconds 2 | sed 's/^/  /'
} | tee "$REPORT"
