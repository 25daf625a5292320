#!/usr/bin/env bash
# Starts the sidecar on its embedded default (every tool mocked, embedded store, no Redis, no keys),
# registers a demo agent, mints it a token, and prints how to call it. Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/debug/sidecar
CONFIG=deploy/sidecar.dev.yaml
PROXY=${SIDECAR_PROXY_LISTEN:-127.0.0.1:8080}
ADMIN=${SIDECAR_ADMIN_LISTEN:-127.0.0.1:9090}
STATE=${SIDECAR_STATE_DIR:-.state}

"$BIN" run --config "$CONFIG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' INT TERM

for _ in $(seq 1 100); do
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { echo "sidecar exited" >&2; exit 1; }
  sleep 0.1
done

# The first start generated the fleet keys and the admin token in $STATE; use them for a demo agent.
ADMIN_TOKEN=$(cat "$STATE/admin.token")
CA=$(cd "$STATE" && pwd)/ca/ca.pem   # the interception CA, generated on first start too
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
AGENT=$(curl -fsS -X POST "http://$ADMIN/api/agents" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"demo","role":"developer","created_by":"make run"}' | json agent_id)
TOKEN=$(curl -fsS -X POST "http://$ADMIN/api/agents/$AGENT/tokens" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"ttl":"8h"}' | json token)

cat >&2 <<MSG

  agent sidecar is running (pid $PID): proxy http://$PROXY, admin http://$ADMIN
  every tool is mocked; no API key is needed. A demo agent ($AGENT, role developer: every tool) has a token for 8 hours:

  export AGENT_TOKEN=$TOKEN

  # unmodified SDKs and curl calling https:// APIs (HTTPS_PROXY): they trust the sidecar's CA
  export HTTPS_PROXY="http://agent:\$AGENT_TOKEN@$PROXY"
  export SSL_CERT_FILE=$CA REQUESTS_CA_BUNDLE=$CA HTTPLIB2_CA_CERTS=$CA NODE_EXTRA_CA_CERTS=$CA
  curl --cacert $CA 'https://serpapi.com/search?q=coffee&num=2'
  python3 -c "import openai; print(openai.OpenAI(api_key='any').chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'hi'}]).choices[0].message.content)"

  # forward proxy (what HTTP_PROXY clients do): the token is the proxy password
  curl -x "http://agent:\$AGENT_TOKEN@$PROXY" 'http://serpapi.com/search?q=coffee&num=2'

  # reverse route for SDKs with a base URL, streaming; the token is the SDK's API key
  curl -N http://$PROXY/openai/v1/chat/completions -H "Authorization: Bearer \$AGENT_TOKEN" \\
       -H 'content-type: application/json' \\
       -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}'

  # the 4Runr compatibility API
  curl http://$PROXY/api/proxy-request -H 'content-type: application/json' \\
       -d '{"agent_token":"'\$AGENT_TOKEN'","tool":"gmail_send","action":"send","params":{"to":"ops@example.com","subject":"hi","body":"hello"}}'

  # Python
  python3 -c "import os,requests; print(requests.get('http://serpapi.com/search?q=tea', proxies={'http': 'http://agent:'+os.environ['AGENT_TOKEN']+'@$PROXY'}).json()['organic_results'][0])"
  python3 -c "import os,openai; c=openai.OpenAI(base_url='http://$PROXY/openai/v1', api_key=os.environ['AGENT_TOKEN']); print(c.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'hi'}]).choices[0].message.content)"

  curl http://$ADMIN/metrics                                               # Prometheus metrics
  curl -H "Authorization: Bearer \$(cat $STATE/admin.token)" http://$ADMIN/api/agents   # control API
  Ctrl-C to stop (graceful drain).

MSG
wait $PID
