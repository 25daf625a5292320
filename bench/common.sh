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
# BENCH_BIN=path: measure that binary as it is, with no build (a copy of the production binary, while
# the sources change meanwhile; a run of several scripts builds once).
if [[ -n "${BENCH_BIN:-}" ]]; then
  SIDECAR_BIN=$BENCH_BIN
  build_sidecar() { [[ -x "$SIDECAR_BIN" ]] || { echo "BENCH_BIN=$SIDECAR_BIN is not an executable" >&2; return 1; }; }
fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
# A step that fails ends the run (set -e): say which, instead of ending without a word.
cleanup() {
  local rc=$? failed=$BASH_COMMAND
  (( rc == 0 )) || echo "$(basename "$0"): stopped (exit $rc) at: $failed" >&2
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wrk rounds over rows (name.lua in $WORK), with the proxy's CPU per request; medians over ROUNDS.
ticks() { local t=0; for p in "$1" $(pgrep -P "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
# Context switches (voluntary + involuntary) of every thread of the process: a thread that blocks on a
# lock or sleeps between bursts shows here, not in CPU time.
# A thread may end between the glob and the read (a pool's worker): cat then fails, which must not end
# the bench (pipefail) — this was the runs bench that once stopped without a word.
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }
run_wrk() { # name round url pid
  [[ "$2" == 1 ]] && wrk -t2 -c"$CONNS" -d2s -s "$WORK/$1.lua" "$3" >/dev/null
  local t1; t1=$(ticks "$4"); local c1; c1=$(switches "$4")
  # PERF="row ..." records a call-graph profile of those rows' first round (perf-ROW.data in the current directory).
  local perf=""
  if [[ " ${PERF:-} " == *" $1 "* && "$2" == 1 ]]; then
    perf record ${PERF_ARGS:--F 499 -g} -p "$4" -o "perf-$1.data" -- sleep "$DURATION" >/dev/null 2>&1 & perf=$!
  fi
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/$1.lua" "$3" > "$WORK/$1.$2.txt"
  [[ -n "$perf" ]] && wait "$perf"
  local t2; t2=$(ticks "$4"); local c2; c2=$(switches "$4")
  local n; n=$(awk '/requests in/ {print $1}' "$WORK/$1.$2.txt")
  python3 -c "print(f'{($t2-$t1)/$(getconf CLK_TCK)/$n*1e6:.1f}')" > "$WORK/$1.$2.cpu"
  python3 -c "print(f'{($c2-$c1)/$n:.2f}')" > "$WORK/$1.$2.switches"
}
round_rps() { awk '/Requests\/sec/ {print $2}' "$WORK/$1.$2.txt"; }
median() { sort -g | awk -v m=$(( (ROUNDS + 1) / 2 )) 'NR==m'; }
# A field of a JSON report (tunnel-load, rate-load and bench/sse_stream.py write one per round).
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
# The median over the rounds of FIELD in $WORK/NAME.ROUND.json: med NAME FIELD.
med() { for r in $(seq 1 "$ROUNDS"); do field "$WORK/$1.$r.json" "$2"; done | median; }
median_round() { for r in $(seq 1 "$ROUNDS"); do echo "$(round_rps "$1" "$r") $r"; done | median | awk '{print $2}'; }
rps() { round_rps "$1" "$(median_round "$1")"; }
pct() { awk -v p="$2" '$1==p {print $2}' "$WORK/$1.$(median_round "$1").txt"; }
cpu() { for r in $(seq 1 "$ROUNDS"); do cat "$WORK/$1.$r.cpu"; done | median; }

# The backend every bench proxies to: nginx, one worker, canned answers shaped like the real APIs (a chat
# completion with usage, a Gmail send, a small page, SerpAPI results for anything else), on $BACKEND.
write_backend() {
  local chat='{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
  local serp='{"search_metadata":{"status":"Success"},"organic_results":[{"position":1,"title":"bench","link":"https://example.com/"}]}'
  cat > "$WORK/backend.conf" <<CONF
worker_processes 1; pid $WORK/backend.pid; error_log $WORK/backend.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$BACKEND;
    location /v1/chat/completions { default_type application/json; return 200 '$chat'; }
    location /gmail/ { default_type application/json; return 200 '{"id":"m1","threadId":"t1","labelIds":["SENT"]}'; }
    location /page { default_type text/html; return 200 '<html><body>bench page</body></html>'; }
    location / { default_type application/json; return 200 '$serp'; } } }
CONF
}

# nginx reverse-proxying every request to the backend ($BACKEND) on $NGINX, with upstream keep-alive and
# its access log on (to a file): the peer the sidecar is measured against. $1: more directives for the
# location (bench/stream.sh: `proxy_buffering off;`, as nginx is set up for SSE).
write_proxy() {
  cat > "$WORK/proxy.conf" <<CONF
worker_processes auto; pid $WORK/proxy.pid; error_log $WORK/proxy.err; daemon off;
events { worker_connections 4096; }
http { access_log $WORK/nginx-access.log; keepalive_requests 100000; client_body_buffer_size 64k;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; ${1:-} } } }
CONF
}

# An agent of role "bench" made through the admin port $1 (admin token benchadmin0123456789, as the bench
# sidecars are started with), and a 2-hour token for agent $2.
BENCH_ADMIN=benchadmin0123456789
bench_agent() {
  curl -fs -X POST "http://127.0.0.1:$1/api/agents" -H "Authorization: Bearer $BENCH_ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench","role":"bench","created_by":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["agent_id"])'
}
bench_token() {
  curl -fs -X POST "http://127.0.0.1:$1/api/agents/$2/tokens" -H "Authorization: Bearer $BENCH_ADMIN" -H 'Content-Type: application/json' \
    -d '{"ttl":"2h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# The "full policy" of the real-path benches: guards, a GCRA rate, a daily quota, concurrency and (OpenAI)
# a token budget on every tool, all set high enough that nothing is refused — the cost of deciding.
write_bench_policy() { cp bench/policy.yaml "$WORK/policy.yaml"; }

# The head of a bench sidecar's config: its proxy and admin ports ($1, $2), its own state dir ($3) and the
# bench policy; the caller adds the rest.
policy_conf_head() {
  printf 'version: 1\nlisten: {proxy: "127.0.0.1:%s", admin: "127.0.0.1:%s"}\nstate: {dir: "%s"}\npolicy: {file: "%s"}\n' \
    "$1" "$2" "$3" "$WORK/policy.yaml"
}

# Waits (up to 10 s each) until the sidecars on these admin ports answer /readyz.
wait_ready() { for a in "$@"; do for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$a/readyz" >/dev/null 2>&1 && break; sleep 0.1; done; done; }
