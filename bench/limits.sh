#!/usr/bin/env bash
# Limits benchmark: the same proxied call (serpapi route to a fast nginx backend, agent token on the cached
# path) through two sidecars in one run — one deciding its limits in the embedded store, one in Redis
# (leases on unless LEASE=off: most requests decided from units the sidecar leased; otherwise one EVALSHA
# per request for concurrency + rate + quota). Limits are set high so nothing is refused: this measures
# the cost of deciding, not of refusing. Targets: Redis >= 0.9x embedded req/s, p99 within +0.5 ms,
# <= 0.1 Redis commands per request. CLUSTER=1 adds a third sidecar on a 3-master Redis Cluster
# (target: >= 0.9x the single Redis).
source "$(dirname "$0")/common.sh"
LOADS=${LOADS:-"4 64"}   # wrk connections: moderate load (latency cost) and saturation (throughput cost)
BACKEND=$(free_port); REDIS=$(free_port); P1=$(free_port); A1=$(free_port); P2=$(free_port); A2=$(free_port); P3=$(free_port); A3=$(free_port)
NAMES="embedded redis"
if [[ "${CLUSTER:-0}" == 1 ]]; then
  NAMES="embedded redis cluster"
  # Cluster nodes need their bus port (+10000) free too: taken from 2xxxx.
  CPORTS=(); while (( ${#CPORTS[@]} < 3 )); do p=$((20000 + RANDOM % 10000)); python3 -c "import socket
for q in ($p, $p + 10000): socket.socket().bind(('127.0.0.1', q))" 2>/dev/null && CPORTS+=("$p"); done
fi
build_sidecar

write_backend
cat > "$WORK/policy.yaml" <<CONF
version: 1
roles:
  bench:
    allow: ["serpapi:search"]
    concurrency: 1000
    rules:
      - scope: "serpapi:search"
        rate: {limit: 1000000, per: 1s, burst: 1000000}
        quota: {limit: 1000000000, window: day, timezone: UTC}
CONF
mkdir -p "$WORK/keys" && "$SIDECAR_BIN" keys init "$WORK/keys" >/dev/null
for n in $NAMES; do
  case $n in
    embedded) P=$P1; A=$A1; R="" ;;
    redis) P=$P2; A=$A2; R="redis: {url: \"redis://127.0.0.1:$REDIS/0\"}" ;;
    cluster) P=$P3; A=$A3; R="redis: {url: \"redis+cluster://127.0.0.1:${CPORTS[0]},127.0.0.1:${CPORTS[1]}\"}" ;;
  esac
  cat > "$WORK/$n.yaml" <<CONF
version: 1
listen: {proxy: "127.0.0.1:$P", admin: "127.0.0.1:$A"}
state: {dir: "$WORK/state-$n", lease: ${LEASE:-auto}}
auth: {keys_dir: "$WORK/keys"}
policy: {file: "$WORK/policy.yaml"}
tools:
  serpapi: {mode: live, base_url: "http://127.0.0.1:$BACKEND", cache_ttl: 0s}
$R
CONF
done
nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
if [[ "${CLUSTER:-0}" == 1 ]]; then
  for p in "${CPORTS[@]}"; do
    mkdir -p "$WORK/node-$p"
    (cd "$WORK/node-$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
      --save '' --appendonly no >/dev/null) & PIDS+=($!)
  done
  sleep 0.5
  redis-cli --cluster create "${CPORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do redis-cli -p "${CPORTS[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
fi
sleep 0.3
for n in $NAMES; do
  SIDECAR_ADMIN_TOKEN=$BENCH_ADMIN SERPAPI_API_KEY=k "$SIDECAR_BIN" run --config "$WORK/$n.yaml" > "$WORK/$n.log" 2>&1 & PIDS+=($!)
done
if [[ "${CLUSTER:-0}" == 1 ]]; then wait_ready "$A1" "$A2" "$A3"; else wait_ready "$A1" "$A2"; fi
token() { bench_token "$1" "$(bench_agent "$1")"; }  # admin-port
T1=$(token $A1); T2=$(token $A2); [[ "${CLUSTER:-0}" == 1 ]] && T3=$(token $A3)
run() { # name url token connections admin-port
  wrk -t2 -c"$4" -d3s -H "X-Agent-Token: $3" "$2" >/dev/null
  local before; before=$(sent "$5")
  redis-cli -p "$REDIS" CONFIG RESETSTAT >/dev/null
  wrk -t2 -c"$4" -d"${DURATION}s" --latency -H "X-Agent-Token: $3" "$2" > "$WORK/$1.txt"
  echo $(( $(sent "$5") - before )) > "$WORK/$1.cmds"
  redis-cli -p "$REDIS" INFO commandstats | awk -F'[=,:]' '/^cmdstat_/ {sub("cmdstat_", "", $1); printf "%s=%s ", $1, $3}' > "$WORK/$1.cmdlist"
}
# Redis commands the sidecar sent (its gateway_redis_latency_seconds_count): per request of the measured run.
sent() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^gateway_redis_latency_seconds_count/ {n = $2} END {print int(n)}'; }
per_request() { python3 -c "print(f'{$(cat "$WORK/$1.cmds") / $(awk '/requests in/ {print $1}' "$WORK/$1.txt"):.3f}')"; }
rps() { awk '/Requests\/sec/ {print $2}' "$WORK/$1.txt"; }
pct() { awk -v p="$2" '$1==p {print $2}' "$WORK/$1.txt"; }
ms() { python3 -c "v='$1'; print(float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000)"; }
REPORT="$OUT/limits-$(date -u +%Y%m%dT%H%M%SZ).txt"
echo "limits benchmark $(date -u +%FT%TZ), $(nproc) cores, wrk -t2 -d${DURATION}s, redis-server on the same 2 cores" | tee "$REPORT"
for c in $LOADS; do
  run embedded-$c "http://127.0.0.1:$P1/serpapi/search?q=bench" "$T1" "$c" "$A1"
  run redis-$c "http://127.0.0.1:$P2/serpapi/search?q=bench" "$T2" "$c" "$A2"
  ER=$(rps embedded-$c); RR=$(rps redis-$c)
  {
    echo "-- $c connections"
    printf "%-9s %10s %10s %10s\n" "" "req/s" "p50" "p99"
    printf "%-9s %10s %10s %10s\n" embedded "$ER" "$(pct embedded-$c 50%)" "$(pct embedded-$c 99%)"
    printf "%-9s %10s %10s %10s\n" redis "$RR" "$(pct redis-$c 50%)" "$(pct redis-$c 99%)"
    echo "ratio redis/embedded req/s: $(python3 -c "print(f'{$RR/$ER:.2f}')") (target >= 0.9)"
    echo "redis commands per request: $(per_request redis-$c) (target <= 0.1 far from limits); inside Redis, scripts included: $(cat "$WORK/redis-$c.cmdlist")"
    echo "admissions from leased units (since start): $(curl -s "http://127.0.0.1:$A2/metrics" | awk '/^gateway_limit_lease_decisions_total/ {if ($0 ~ /local/) l=$2; else s=$2} END {if (l+s > 0) printf "%.1f %%", 100*l/(l+s); else print "n/a"}')"
    echo "p99 difference: $(python3 -c "print(f'{$(ms "$(pct redis-$c 99%)") - $(ms "$(pct embedded-$c 99%)"):+.2f} ms')") (target <= +0.5 ms)"
    grep -h "Non-2xx" "$WORK"/embedded-$c.txt "$WORK"/redis-$c.txt || true
  } | tee -a "$REPORT"
  if [[ "${CLUSTER:-0}" == 1 ]]; then
    run cluster-$c "http://127.0.0.1:$P3/serpapi/search?q=bench" "$T3" "$c" "$A3"
    CR=$(rps cluster-$c)
    {
      printf "%-9s %10s %10s %10s\n" cluster "$CR" "$(pct cluster-$c 50%)" "$(pct cluster-$c 99%)"
      echo "ratio cluster/redis req/s: $(python3 -c "print(f'{$CR/$RR:.2f}')") (target >= 0.9); cluster commands per request: $(per_request cluster-$c)"
      grep -h "Non-2xx" "$WORK"/cluster-$c.txt || true
    } | tee -a "$REPORT"
  fi
done
