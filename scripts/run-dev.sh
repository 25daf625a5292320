#!/usr/bin/env bash
# Starts the sidecar on its embedded default (every tool mocked, embedded store, no Redis, no keys)
# and prints how to call it. Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/debug/sidecar
CONFIG=deploy/sidecar.dev.yaml
PROXY=${SIDECAR_PROXY_LISTEN:-127.0.0.1:8080}
ADMIN=${SIDECAR_ADMIN_LISTEN:-127.0.0.1:9090}

"$BIN" run --config "$CONFIG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' INT TERM

for _ in $(seq 1 100); do
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { echo "sidecar exited" >&2; exit 1; }
  sleep 0.1
done

cat >&2 <<MSG

  agent sidecar is running (pid $PID): proxy http://$PROXY, admin http://$ADMIN
  every tool is mocked; no API key is needed. Try, from another terminal:

  # forward proxy (what HTTP_PROXY clients do); the sidecar would originate TLS to the real API
  curl -x http://$PROXY 'http://serpapi.com/search?q=coffee&num=2'

  # reverse route for SDKs with a base URL, streaming
  curl -N http://$PROXY/openai/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}'

  # the 4Runr compatibility API
  curl http://$PROXY/api/proxy-request -H 'content-type: application/json' \\
       -d '{"tool":"gmail_send","action":"send","params":{"to":"ops@example.com","subject":"hi","body":"hello"}}'

  # Python
  python3 -c "import requests; print(requests.get('http://serpapi.com/search?q=tea', proxies={'http': 'http://$PROXY'}).json()['organic_results'][0])"
  python3 -c "import openai; c=openai.OpenAI(base_url='http://$PROXY/openai/v1', api_key='unused'); print(c.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'hi'}]).choices[0].message.content)"

  curl http://$ADMIN/metrics      # Prometheus metrics
  Ctrl-C to stop (graceful drain).

MSG
wait $PID
