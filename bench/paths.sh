#!/usr/bin/env bash
# Real-path benchmark: every tool's call the way agents make it, through the production build, each beside
# nginx reverse-proxying the identical request (same method, path, body) to the same backend, in one run.
#
#   backend:  nginx, one worker, canned answers shaped like the real APIs (chat completion with usage,
#             SerpAPI results, a Gmail send, a small page)
#   nginx:    reverse proxy to the backend with upstream keep-alive, access log on (to a file)
#   sidecar:  the production build (scripts/pgo.sh), access log on (to a file), every tool live against the
#             backend, the embedded store. Rows:
#               serpapi-open      GET /serpapi/search, authentication off, no limits (bench/run.sh's path)
#               serpapi           GET /serpapi/search, agent token, full policy
#               serpapi-forward   GET http://serpapi.com/search (absolute-form, Proxy-Authorization), token, policy
#               chat              POST /openai/v1/chat/completions, token, full policy
#               chat-forward      POST http://api.openai.com/v1/chat/completions, token, full policy
#               gmail             POST /gmail/v1/users/me/messages/send, token, full policy, each send its own
#                                 Idempotency-Key (a distinct email: claimed and recorded in the ledger)
#               fetch-forward     GET http://127.0.0.1:BACKEND/page (absolute-form), token, full policy
#             "full policy": the role's guards (models, max_tokens; engines, max_num; recipient domains;
#             fetch hosts), a GCRA rate, a daily quota, concurrency and (OpenAI) a token budget, all set
#             high enough that nothing is refused: the cost of deciding, not of refusing
#   load:     wrk -t2 -c64, DURATION s after a warm-up, ROUNDS interleaved rounds (medians)
#
# Prints req/s, p50, p99, CPU per request (user+system of the proxy's processes) and the ratio to nginx's
# row for the same request, and the sidecar's RSS.
source "$(dirname "$0")/common.sh"
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
# RECEIPTS=false runs the policy sidecar without signed receipts. The row chat-noreceipts (not in the
# default ROWS) is the chat row through a third sidecar with receipts off, in the same run: what they cost.
ROWS=${ROWS:-"serpapi-open serpapi serpapi-forward chat chat-forward gmail fetch-forward"}
BACKEND=$(free_port); NGINX=$(free_port); P1=$(free_port); A1=$(free_port); P2=$(free_port); A2=$(free_port); P3=$(free_port); A3=$(free_port)
build_sidecar

write_backend
write_proxy
write_bench_policy
TOOLS="serpapi: {mode: live, base_url: \"http://127.0.0.1:$BACKEND\", cache_ttl: 0s}
  openai: {mode: live, base_url: \"http://127.0.0.1:$BACKEND\"}
  gmail_send: {mode: live, base_url: \"http://127.0.0.1:$BACKEND\"}
  http_fetch: {mode: live, cache_ttl: 0s}"
cat > "$WORK/open.yaml" <<CONF
version: 1
listen: {proxy: "127.0.0.1:$P1", admin: "127.0.0.1:$A1"}
auth: {required: false}
state: {dir: "$WORK/state-open"}
tools:
  $TOOLS
CONF
{ policy_conf_head "$P2" "$A2" "$WORK/state-policy"; cat <<CONF; } > "$WORK/policy-side.yaml"
egress: {allow_cidrs: ["127.0.0.0/8"]}
receipts: {enabled: ${RECEIPTS:-true}}
tools:
  $TOOLS
CONF
nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
nginx -c "$WORK/proxy.conf" -p "$WORK" & NGINX_PID=$!; PIDS+=($NGINX_PID)
ENVS=(SERPAPI_API_KEY=9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0 OPENAI_API_KEY=sk-proj-Q7f9Xk2LmN4pR8sT1vW3yZabcdefghijklmnopqrstuvwxyz0123 GMAIL_ACCESS_TOKEN=ya29.a0AfH6SMBx1234567890abcdefghijklmnopqrstuvwxyzABCDEFGHIJ SIDECAR_ADMIN_TOKEN=$BENCH_ADMIN)
env "${ENVS[@]}" "$SIDECAR_BIN" run --config "$WORK/open.yaml" > "$WORK/open.log" 2>&1 & OPEN=$!; PIDS+=($OPEN)
env "${ENVS[@]}" "$SIDECAR_BIN" run --config "$WORK/policy-side.yaml" > "$WORK/policy.log" 2>&1 & SIDE=$!; PIDS+=($SIDE)
ADMINS="$A1 $A2"
if [[ " $ROWS " == *" chat-noreceipts "* ]]; then
  sed -e "s/127.0.0.1:$P2/127.0.0.1:$P3/; s/127.0.0.1:$A2/127.0.0.1:$A3/; s#state-policy#state-noreceipts#; s/receipts: {enabled: .*}/receipts: {enabled: false}/" \
    "$WORK/policy-side.yaml" > "$WORK/noreceipts.yaml"
  env "${ENVS[@]}" "$SIDECAR_BIN" run --config "$WORK/noreceipts.yaml" > "$WORK/noreceipts.log" 2>&1 & NORECEIPTS=$!; PIDS+=($NORECEIPTS)
  ADMINS="$ADMINS $A3"
fi
wait_ready $ADMINS
AGENT=$(bench_agent "$A2"); TOKEN=$(bench_token "$A2" "$AGENT")
BASIC=$(printf 'agent:%s' "$TOKEN" | base64 -w0)
if [[ -n "${NORECEIPTS:-}" ]]; then
  AGENT3=$(bench_agent "$A3"); TOKEN3=$(bench_token "$A3" "$AGENT3")
fi
RAW=$(printf 'To: a@example.com\r\nSubject: bench\r\n\r\nhello' | base64 -w0 | tr '+/' '-_' | tr -d '=')

# One wrk script per request shape: method, request-target, headers and body.
script() { # name method target body [header: value]...
  local name=$1 method=$2 target=$3 body=$4; shift 4
  {
    echo "wrk.method = \"$method\""
    [[ -n "$body" ]] && printf 'wrk.body = [[%s]]\n' "$body"
    for h in "$@"; do printf 'wrk.headers["%s"] = "%s"\n' "${h%%: *}" "${h#*: }"; done
    if [[ $name == *gmail* ]]; then
      # Every send a different email (its own Idempotency-Key): identical sends would be replayed from
      # the sidecar's idempotency ledger instead of sent, which is not what this row measures.
      echo 'math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))'
      echo 'local n = 0'
      echo "request = function() n = n + 1; wrk.headers[\"Idempotency-Key\"] = string.format(\"%x-%x\", math.random(0, 2^31), n); return wrk.format(nil, \"$target\") end"
    else
      echo "request = function() return wrk.format(nil, \"$target\") end"
    fi
  } > "$WORK/$name.lua"
}
CHAT_BODY='{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Summarize the benchmark in one word."}]}'
GMAIL_BODY="{\"raw\":\"$RAW\"}"
JSON="Content-Type: application/json"
# name | url (proxy to hit) | pid | script arguments
declare -A URL PID
row() { URL[$1]=$2; PID[$1]=$3; shift 3; script "$@"; }
row serpapi-open "http://127.0.0.1:$P1" "$OPEN" serpapi-open GET "/serpapi/search?q=bench&num=10" ""
row serpapi "http://127.0.0.1:$P2" "$SIDE" serpapi GET "/serpapi/search?q=bench&num=10" "" "X-Agent-Token: $TOKEN"
row serpapi-forward "http://127.0.0.1:$P2" "$SIDE" serpapi-forward GET "http://serpapi.com/search?q=bench&num=10" "" "Proxy-Authorization: Basic $BASIC"
row chat "http://127.0.0.1:$P2" "$SIDE" chat POST "/openai/v1/chat/completions" "$CHAT_BODY" "$JSON" "Authorization: Bearer $TOKEN"
row chat-forward "http://127.0.0.1:$P2" "$SIDE" chat-forward POST "http://api.openai.com/v1/chat/completions" "$CHAT_BODY" "$JSON" "Proxy-Authorization: Basic $BASIC" "Authorization: Bearer sk-placeholder"
[[ -n "${NORECEIPTS:-}" ]] && row chat-noreceipts "http://127.0.0.1:$P3" "$NORECEIPTS" chat-noreceipts POST "/openai/v1/chat/completions" "$CHAT_BODY" "$JSON" "Authorization: Bearer $TOKEN3"
row gmail "http://127.0.0.1:$P2" "$SIDE" gmail POST "/gmail/v1/users/me/messages/send" "$GMAIL_BODY" "$JSON" "Authorization: Bearer $TOKEN"
row fetch-forward "http://127.0.0.1:$P2" "$SIDE" fetch-forward GET "http://127.0.0.1:$BACKEND/page" "" "Proxy-Authorization: Basic $BASIC"
# nginx's twin of each row: the same method, origin-form path and body.
nginx_twin() { # row
  case $1 in
    serpapi*) script "nginx-$1" GET "/search?q=bench&num=10" "" ;;
    chat*) script "nginx-$1" POST "/v1/chat/completions" "$CHAT_BODY" "$JSON" ;;
    gmail) script "nginx-$1" POST "/gmail/v1/users/me/messages/send" "$GMAIL_BODY" "$JSON" ;;
    fetch*) script "nginx-$1" GET "/page" "" ;;
  esac
}
for r in $ROWS; do nginx_twin "$r"; done
# Every row answers 200 before anything is measured.
for r in $ROWS; do
  code=$(wrk -t1 -c1 -d1s -s "$WORK/$r.lua" "${URL[$r]}" 2>&1 | awk '/Non-2xx/ {print "non-2xx"}')
  [[ -z "$code" ]] || { echo "row $r answers non-2xx; see $WORK/policy.log" >&2; tail -3 "$WORK/policy.log" >&2; exit 1; }
done

( while kill -0 $SIDE 2>/dev/null; do awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r, a}' /proc/$SIDE/status; sleep 0.5; done ) > "$WORK/rss.txt" &
SAMPLER=$!
for round in $(seq 1 "$ROUNDS"); do
  for r in $ROWS; do
    run_wrk "nginx-$r" "$round" "http://127.0.0.1:$NGINX" "$NGINX_PID"
    run_wrk "$r" "$round" "${URL[$r]}" "${PID[$r]}"
  done
done
kill $SAMPLER 2>/dev/null || true
REPORT="$OUT/paths-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "real-path benchmark $(date -u +%FT%TZ), $(nproc) cores, wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds (medians)"
  printf "%-16s %9s %9s %9s %10s | %9s %10s | %6s\n" row "req/s" p50 p99 "cpu us/req" "nginx r/s" "nginx cpu" ratio
  for r in $ROWS; do
    printf "%-16s %9s %9s %9s %10s | %9s %10s | %6s\n" "$r" "$(rps "$r")" "$(pct "$r" 50%)" "$(pct "$r" 99%)" "$(cpu "$r")" \
      "$(rps "nginx-$r")" "$(cpu "nginx-$r")" "$(python3 -c "print(f'{$(rps "$r")/$(rps "nginx-$r"):.2f}')")"
  done
  # RSS counts the binary's code pages too (file-backed, clean, shared with the page cache); RssAnon is
  # the memory the process itself holds (heap, stacks, SQLite caches).
  echo "sidecar (policy) RSS under load: max sampled $(sort -n "$WORK/rss.txt" | tail -1 | awk '{print $1 " kB (anonymous " $2 " kB)"}'); idle after: $(awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r " kB (anonymous " a " kB)"}' /proc/$SIDE/status)"
  for r in $ROWS; do cat "$WORK/$r".*.txt | awk -v r="$r" '/Non-2xx|Socket errors/ {print r ": " $0}'; done
  true
} | tee "$REPORT"
