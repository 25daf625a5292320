#!/usr/bin/env bash
# HTTPS-interception benchmark: the sidecar terminating CONNECT tunnels vs nginx terminating TLS, both
# proxying to the same fast local backend, in one run.
#
#   backend:  nginx, one worker, `return 200` of a 120-byte JSON body (as bench/run.sh)
#   nginx:    TLS on 127.0.0.1 with a P-256 certificate for serpapi.com from a throwaway CA (the same key
#             type and chain length as the sidecar's leaves), reverse proxy to the backend with upstream
#             keep-alive, access log on (to a file); TLS 1.3, no session resumption used by the client
#   sidecar:  the production build (profile-guided, scripts/pgo.sh), authentication on, the serpapi tool
#             live against the backend; the client opens `CONNECT serpapi.com:443` with an agent token and
#             speaks TLS through it, so every request is decrypted, authenticated, interpreted, has its key
#             injected and its headers rewritten, and is logged
#   floor:    relay-floor --tls, a bare SwiftNIO relay terminating TLS with nginx's certificate (swift-nio-ssl,
#             NIO's HTTP/1.1 codec, a kept-alive upstream connection per loop; no CONNECT, no policy, no
#             logging): the most an HTTPS proxy on this stack reaches here, in the same rounds
#   load:     tunnel-load (this repository: wrk cannot open a CONNECT tunnel first) on 2 loops, everything
#             on 127.0.0.1; ROUNDS interleaved rounds (default 3), medians
#     keepalive  64 connections, each one tunnel + handshake, then requests back to back for DURATION s
#     handshake  8 connections, each opening a new tunnel (CONNECT + full TLS handshake) per request: the
#                cost of a new tunnel to a cached name, as CPU per handshake of the server process
#     names      10 000 tunnels to 10 000 distinct names (mocked http_fetch hosts): RSS before and after
#
# Prints req/s, p50, p99 and CPU per request (user+system of the server's process tree, from /proc).
source "$(dirname "$0")/common.sh"
CONNS=${CONNS:-64}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-8}
NAMES=${NAMES:-10000}
ROUNDS=${ROUNDS:-3}
BACKEND=$(free_port); NGINX=$(free_port); PROXY=$(free_port); ADMIN=$(free_port); FLOOR=$(free_port)

build_sidecar
swift build "${RELEASE[@]}" --product tunnel-load >&2
swift build "${RELEASE[@]}" --product relay-floor >&2
LOAD=.build/release/tunnel-load

# nginx's certificate: a P-256 leaf for serpapi.com from a throwaway CA.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=bench CA" -days 2 -out "$WORK/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/leaf.key" 2>/dev/null
openssl req -new -key "$WORK/leaf.key" -subj "/CN=serpapi.com" -out "$WORK/leaf.csr" 2>/dev/null
printf "subjectAltName=DNS:serpapi.com\nextendedKeyUsage=serverAuth\n" > "$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 -extfile "$WORK/leaf.ext" \
  -out "$WORK/leaf.pem" 2>/dev/null
cat "$WORK/leaf.pem" "$WORK/ca.pem" > "$WORK/chain.pem"

write_backend
cat > "$WORK/tls.conf" <<CONF
worker_processes auto; pid $WORK/tls.pid; error_log $WORK/tls.err; daemon off;
events { worker_connections 4096; }
http { access_log $WORK/nginx-access.log; keepalive_requests 100000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGINX ssl; ssl_certificate $WORK/chain.pem; ssl_certificate_key $WORK/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$WORK/sidecar.yaml" <<CONF
version: 1
listen: {proxy: "127.0.0.1:$PROXY", admin: "127.0.0.1:$ADMIN"}
state: {dir: "$WORK/state"}
tools:
  serpapi: {mode: live, base_url: "http://127.0.0.1:$BACKEND", cache_ttl: 0s}
CONF

nginx -c "$WORK/backend.conf" -p "$WORK" & PIDS+=($!)
nginx -c "$WORK/tls.conf" -p "$WORK" & NGINX_PID=$!; PIDS+=($NGINX_PID)
.build/release/relay-floor "$FLOOR" "$BACKEND" 2 --tls "$WORK/chain.pem" "$WORK/leaf.key" > "$WORK/floor.log" 2>&1 & FLOOR_PID=$!; PIDS+=($FLOOR_PID)
SERPAPI_API_KEY=bench-key "$SIDECAR_BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 & SIDECAR=$!; PIDS+=($SIDECAR)
wait_ready "$ADMIN"
curl -fs "http://127.0.0.1:$ADMIN/ca.pem" > "$WORK/sidecar-ca.pem"
ADMIN_TOKEN=$(cat "$WORK/state/admin.token")
AGENT=$(curl -fs -X POST "http://127.0.0.1:$ADMIN/api/agents" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","role":"developer","created_by":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["agent_id"])')
TOKEN=$(curl -fs -X POST "http://127.0.0.1:$ADMIN/api/agents/$AGENT/tokens" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"ttl":"1h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for _ in $(seq 1 50); do curl -fs --cacert "$WORK/ca.pem" --resolve "serpapi.com:$NGINX:127.0.0.1" "https://serpapi.com:$NGINX/search?q=x" >/dev/null 2>&1 && break; sleep 0.1; done

load() { # name round pid mode conns -- tunnel-load arguments
  local name=$1 round=$2 pid=$3 mode=$4 conns=$5; shift 6
  [[ "$round" == 1 ]] && "$LOAD" "$@" --mode "$mode" --connections "$conns" --seconds 2 >/dev/null
  local t1; t1=$(ticks "$pid")
  # PERF="name ...": a call-graph profile of those rows' first round (perf-NAME.data), as bench/common.sh.
  local perf=""
  if [[ " ${PERF:-} " == *" $name "* && "$round" == 1 ]]; then
    perf record -F 499 -g -p "$pid" -o "perf-$name.data" -- sleep "$DURATION" >/dev/null 2>&1 & perf=$!
  fi
  "$LOAD" "$@" --mode "$mode" --connections "$conns" --seconds "$DURATION" > "$WORK/$name.$round.json"
  [[ -n "$perf" ]] && wait "$perf"
  local t2; t2=$(ticks "$pid")
  python3 -c "print(f'{($t2-$t1)/$(getconf CLK_TCK)/$(field "$WORK/$name.$round.json" requests)*1e6:.1f}')" > "$WORK/$name.$round.cpu"
}
spread() { for r in $(seq 1 "$ROUNDS"); do python3 -c "print(f'{$(field "$WORK/$1.$r.json" rps)/$(field "$WORK/$2.$r.json" rps):.2f}')"; done | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}'; }
NGINX_ARGS=(127.0.0.1:$NGINX --sni serpapi.com --ca "$WORK/ca.pem" --path "/search?q=bench")
FLOOR_ARGS=(127.0.0.1:$FLOOR --sni serpapi.com --ca "$WORK/ca.pem" --path "/search?q=bench")
SIDECAR_ARGS=(127.0.0.1:$PROXY --connect serpapi.com:443 --proxy-token "$TOKEN" --sni serpapi.com --ca "$WORK/sidecar-ca.pem" --path "/search?q=bench")

for round in $(seq 1 "$ROUNDS"); do
  load nginx-keepalive "$round" "$NGINX_PID" keepalive "$CONNS" -- "${NGINX_ARGS[@]}"
  load floor-keepalive "$round" "$FLOOR_PID" keepalive "$CONNS" -- "${FLOOR_ARGS[@]}"
  load sidecar-keepalive "$round" "$SIDECAR" keepalive "$CONNS" -- "${SIDECAR_ARGS[@]}"
  load nginx-handshake "$round" "$NGINX_PID" handshake "$HANDSHAKE_CONNS" -- "${NGINX_ARGS[@]}"
  load sidecar-handshake "$round" "$SIDECAR" handshake "$HANDSHAKE_CONNS" -- "${SIDECAR_ARGS[@]}"
done

# Leaf-cache memory: warm up past the cache's size, then 10 000 new names; RSS before and after.
rss() { awk '/VmRSS/ {print $2}' /proc/$SIDECAR/status; }
"$LOAD" 127.0.0.1:$PROXY --connect warm.names.bench:443 --proxy-token "$TOKEN" --sni x --ca "$WORK/sidecar-ca.pem" --path / \
  --mode handshake --connections 8 --seconds 120 --names 1000 > /dev/null
RSS_BEFORE=$(rss)
"$LOAD" 127.0.0.1:$PROXY --connect names.bench:443 --proxy-token "$TOKEN" --sni x --ca "$WORK/sidecar-ca.pem" --path / \
  --mode handshake --connections 8 --seconds 300 --names "$NAMES" > "$WORK/names.json"
RSS_AFTER=$(rss)
LEAVES=$(curl -fs "http://127.0.0.1:$ADMIN/metrics" | awk '/^gateway_intercept_leaf_certificates / {print $2}')

REPORT="$OUT/intercept-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "HTTPS-interception benchmark $(date -u +%FT%TZ), $(nproc) cores, tunnel-load on 2 loops, $ROUNDS interleaved rounds (medians), ${DURATION}s each"
  printf "%-22s %10s %10s %10s %14s\n" "" "req/s" "p50 us" "p99 us" "cpu us/req"
  for n in nginx-keepalive floor-keepalive sidecar-keepalive nginx-handshake sidecar-handshake; do
    printf "%-22s %10s %10s %10s %14s\n" "$n" "$(med $n rps)" "$(med $n p50_us)" "$(med $n p99_us)" "$(cpu $n)"
  done
  echo "kept-alive intercepted req/s / nginx TLS req/s: $(python3 -c "print(f'{$(med sidecar-keepalive rps)/$(med nginx-keepalive rps):.2f}')") (target >= 0.8; per round $(spread sidecar-keepalive nginx-keepalive))"
  echo "a bare NIO TLS relay (relay-floor --tls) / nginx TLS req/s: $(python3 -c "print(f'{$(med floor-keepalive rps)/$(med nginx-keepalive rps):.2f}')") (per round $(spread floor-keepalive nginx-keepalive)); kept-alive intercepted / that floor: $(python3 -c "print(f'{$(med sidecar-keepalive rps)/$(med floor-keepalive rps):.2f}')")"
  echo "new tunnel to a cached name, server CPU per handshake / nginx's: $(python3 -c "print(f'{$(cpu sidecar-handshake)/$(cpu nginx-handshake):.2f}')") (target <= 1.5)"
  echo "names: $(field "$WORK/names.json" requests) tunnels to distinct names in $(field "$WORK/names.json" seconds) s, errors $(field "$WORK/names.json" errors); RSS ${RSS_BEFORE} kB -> ${RSS_AFTER} kB ($(( (RSS_AFTER - RSS_BEFORE) / 1024 )) MB; target within 10 MB); leaf cache ${LEAVES}"
  for n in nginx-keepalive floor-keepalive sidecar-keepalive nginx-handshake sidecar-handshake; do
    e=$(med $n errors); [[ "$e" != 0 ]] && echo "$n: $e errors (median round)"
  done
  true
} | tee "$REPORT"
