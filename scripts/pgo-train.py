#!/usr/bin/env python3
"""Training run for the profile-guided release build (scripts/pgo.sh).

Starts a local keep-alive upstream (SerpAPI- and OpenAI-shaped JSON answers), two instances of the
instrumented sidecar named by $SIDECAR_BIN (authentication off, and on with a minted agent token), and
drives a fixed mix of calls through them from 16 keep-alive connections: the serpapi reverse route
(most of it: it is the benchmark's path), the forward proxy, requests inside an intercepted CONNECT
tunnel (HTTPS_PROXY), OpenAI chat with usage, the /api/proxy-request envelope and refusals (no token:
401; a chat call the scraper role may not make: 403; unknown route: 404). A third instance runs a full policy (guards, rate, quota, concurrency, a token
budget on the embedded store: bench/policy.yaml) and takes chat, search and Gmail send calls with an agent token,
with and without a run id (every call distinct, as a working agent's are). Each sidecar writes its
counters to $LLVM_PROFILE_FILE when it exits on SIGTERM.

The processes and the load come from the chaos/e2e harness (FakeUpstream, Sidecar, drive): bounded by
PGO_TRAIN_CALLS (default 40 000) or PGO_TRAIN_SECONDS (default 60), everything on 127.0.0.1 on port 0,
every process stopped by PID.
"""
import base64
import http.client
import json
import os
import ssl
import sys
import tempfile
import threading
from collections import Counter
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from harness import FakeUpstream, Sidecar, drive  # noqa: E402

SERP = {"search_metadata": {"status": "Success"},
        "organic_results": [{"position": 1, "title": "train", "link": "https://example.com/"}]}
SENT = {"id": "msg-1", "threadId": "t-1", "labelIds": ["SENT"]}
CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


# The benchmarks' full policy (bench/policy.yaml), so the real paths' hot code is what gets trained.
POLICY = (Path(__file__).resolve().parents[1] / "bench" / "policy.yaml").read_text()


def config(upstream: FakeUpstream, auth: bool, policy: str = "") -> str:
    return f"""version: 1
auth: {{required: {str(auth).lower()}}}
{policy}
tools:
  serpapi: {{mode: live, base_url: "{upstream.base_url}", cache_ttl: 0s}}
  openai: {{mode: live, base_url: "{upstream.base_url}"}}
  gmail_send: {{mode: live, base_url: "{upstream.base_url}"}}
"""


def mix(open_port: int, auth_port: int, agent_token: str, policy_port: int, policy_token: str, run: str):
    """The calls, as (port, method, target, headers, body); cycled by every connection. `{i}` in a
    target, a header or a body becomes the call's number."""
    chat = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    envelope = json.dumps({"tool": "serpapi", "action": "search", "params": {"q": "train"}}).encode()
    tok = {"X-Agent-Token": agent_token}
    json_h = {"Content-Type": "application/json"}
    calls = [(open_port, "GET", "/serpapi/search?q=train", {}, None)] * 6
    calls += [(auth_port, "GET", "/serpapi/search?q=train", tok, None)] * 6
    calls += [(open_port, "GET", "http://serpapi.com/search?q=train&num=3", {}, None)] * 2
    calls += [(open_port, "POST", "/openai/v1/chat/completions", json_h, chat)] * 2
    calls += [(auth_port, "POST", "/openai/v1/chat/completions", {**tok, **json_h}, chat)]
    calls += [(open_port, "POST", "/api/proxy-request", json_h, envelope)]
    calls += [(-auth_port, "GET", "/search?q=train", {}, None)] * 2  # inside a CONNECT tunnel to serpapi.com
    calls += [(auth_port, "GET", "/serpapi/search?q=train", {}, None)]  # 401
    calls += [(open_port, "GET", "/nowhere", {}, None)]  # 404
    # The full policy, with and without a run.
    bench = {"Authorization": f"Bearer {policy_token}"}
    in_run = {**bench, "X-Run-Id": run}
    varied_chat = '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"summarize {i}"}]}'
    calls += [(policy_port, "POST", "/openai/v1/chat/completions", {**bench, **json_h}, varied_chat)] * 3
    calls += [(policy_port, "POST", "/openai/v1/chat/completions", {**in_run, **json_h}, varied_chat)] * 3
    calls += [(policy_port, "GET", "/serpapi/search?q=train{i}&num=10", bench, None)] * 2
    calls += [(policy_port, "GET", "/serpapi/search?q=train{i}&num=10", in_run, None)] * 2
    # A Gmail send, each its own email (claimed and recorded in the idempotency ledger).
    raw = base64.urlsafe_b64encode(b"To: someone@example.com\r\nSubject: train\r\n\r\nhello").decode()
    send = {**bench, **json_h, "Idempotency-Key": "train-{i}"}
    calls += [(policy_port, "POST", "/gmail/v1/users/me/messages/send", send, json.dumps({"raw": raw}))]
    return calls


def main():
    upstream = FakeUpstream()
    upstream.routes["/search"] = lambda h, rec: FakeUpstream.send_json(h, 200, SERP)
    upstream.routes["/v1/chat/completions"] = lambda h, rec: FakeUpstream.send_json(h, 200, CHAT)
    upstream.routes["/gmail/v1/users/me/messages/send"] = lambda h, rec: FakeUpstream.send_json(h, 200, SENT)
    env = {"SERPAPI_API_KEY": "train-key", "OPENAI_API_KEY": "sk-train", "GMAIL_ACCESS_TOKEN": "ya29.train"}
    sidecars = []
    try:
        sidecars = [Sidecar(config(upstream, auth), env) for auth in (False, True)]
        open_side, auth_side = sidecars
        token = auth_side.new_token(role="scraper", ttl="1h")
        policy_file = Path(tempfile.mkdtemp(prefix="pgo-train-")) / "policy.yaml"
        policy_file.write_text(POLICY)
        sidecars.append(Sidecar(config(upstream, True, f'policy: {{file: "{policy_file}"}}'), env))
        policy_side = sidecars[2]
        agent = policy_side.new_agent(role="bench")
        policy_token = policy_side.new_token(agent_id=agent, ttl="1h")
        r = policy_side.admin_request("POST", "/api/runs", {"name": "train", "agent_id": agent})
        run = r.json()["id"]
        policy_side.admin_request("POST", f"/api/runs/{run}/start")
        calls = mix(open_side.proxy_port, auth_side.proxy_port, token, policy_side.proxy_port, policy_token, run)
        # A negative port: the call goes through a tunnel (HTTPS_PROXY), trusting the sidecar's CA.
        tls = ssl.create_default_context(cadata=http_get(auth_side.admin_url + "/ca.pem"))
        proxy_auth = {"Proxy-Authorization": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()}

        def connection(port):
            if port > 0:
                return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c = http.client.HTTPSConnection("127.0.0.1", -port, timeout=10, context=tls)
            c.set_tunnel("serpapi.com", 443, headers=proxy_auth)
            return c
        statuses = Counter()  # what the training saw: a mix that fails would train the error paths
        local = threading.local()  # each load thread keeps one keep-alive connection per sidecar

        def call(i: int):
            port, method, target, headers, body = calls[i % len(calls)]
            target = target.replace("{i}", str(i))
            headers = {k: v.replace("{i}", str(i)) for k, v in headers.items()}
            if isinstance(body, str):
                body = body.replace("{i}", str(i)).encode()
            conns = local.__dict__.setdefault("conns", {})
            c = conns.get(port) or conns.setdefault(port, connection(port))
            try:
                c.request(method, target, body=body, headers=headers)
                resp = c.getresponse()
                resp.read()
                statuses[resp.status] += 1
            except (OSError, http.client.HTTPException):
                c.close()
                conns.pop(port)

        started = time.monotonic()
        done = drive(call, threads=16, seconds=float(os.environ.get("PGO_TRAIN_SECONDS", "60")),
                     max_calls=int(os.environ.get("PGO_TRAIN_CALLS", "40000")))
        print(f"pgo-train: {len(done)} calls in {time.monotonic() - started:.1f} s, {len(upstream.requests)} reached the upstream, "
              f"statuses {dict(sorted(statuses.items()))}",
              file=sys.stderr)
    finally:
        for s in sidecars:
            s.stop()
        upstream.close()


def http_get(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


if __name__ == "__main__":
    main()
