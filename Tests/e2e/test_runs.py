"""Agent runs end to end with the real binary: idempotent creation, SSE with exact Last-Event-ID resume
(requests and curl -N), tool calls through the forward proxy and the official openai package as events,
one ledger across the four tools (exact across three sidecars on one redis-server), the loop breaker,
the kill switch (in-flight calls aborted within 100 ms, on a second sidecar too), resume across a
restart and across sidecars, and every control-plane bad input."""

import concurrent.futures
import json
import re
import socket
import subprocess
import threading
import time

import openai
import pytest
import requests

from conftest import BIN, LIVE_ENV, LoopbackServer, Redis, metric, sse_chunk, start_chunked

ADMIN = "adm_runs_admin_token_0123456789abc"

POLICY = """
version: 1
prices:
  serpapi: {per_search: 0.01}
  gmail_send: {per_email: 0.002}
  http_fetch: {per_mb: 1.0}
  openai:
    gpt-4o-mini: {input_per_1k: 0.001, output_per_1k: 0.002}
roles:
  developer: {allow: ["*"]}
  looper:
    allow: ["*"]
    loop: {max_repeats: 5, window: 60s, max_cycles: 3, action: pause}
  canceller:
    allow: ["*"]
    loop: {max_repeats: 3, window: 60s, action: cancel}
  budgeted:
    allow: ["*"]
    rules:
      - scope: "openai:*"
        budget: {tokens: 1000000, window: day, timezone: UTC}
"""


class SSE:
    """A Server-Sent Events client on `requests` (streaming): events as dicts {id, event, data}."""

    def __init__(self, url, headers, last_event_id=None):
        self.events = []
        self.comments = 0
        self.done = threading.Event()
        self.status = None
        h = dict(headers)
        if last_event_id is not None:
            h["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=h, stream=True, timeout=60)
        self.status = self.response.status_code
        self.headers = self.response.headers
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        cur = {}
        try:
            for raw in self.response.iter_lines(decode_unicode=True):
                if raw is None:
                    continue
                if raw == "":
                    if "data" in cur:
                        cur["data"] = json.loads(cur["data"])
                        self.events.append(cur)
                    cur = {}
                elif raw.startswith(":"):
                    self.comments += 1
                else:
                    k, _, v = raw.partition(":")
                    cur[k] = v[1:] if v.startswith(" ") else v
        except Exception:
            pass
        finally:
            self.done.set()

    def wait_for(self, predicate, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(predicate(e) for e in list(self.events)):
                return
            time.sleep(0.01)
        raise AssertionError(f"event not seen; got {[e.get('event') for e in self.events]}")

    def close(self):
        self.response.close()


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys"
    subprocess.run([str(BIN), "keys", "init", str(path)], check=True, capture_output=True)
    return path


def runs_config(keys, policy_path, extra=""):
    return f"""
version: 1
auth: {{keys_dir: "{keys}"}}
policy: {{file: "{policy_path}"}}
limits: {{drain_timeout: 2s}}
runs: {{heartbeat: 500ms, max_streams_per_run: 4}}
{extra}
"""


@pytest.fixture
def start(tmp_path, keys, sidecar_factory):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    def go(redis_url=None, extra="", state=None, env=None, config=None):
        e = {"SIDECAR_ADMIN_TOKEN": ADMIN, "SIDECAR_STATE_DIR": str(state or tmp_path / f"state-{time.time_ns()}")}
        if redis_url:
            e["REDIS_URL"] = redis_url
        e.update(env or {})
        return sidecar_factory(config or runs_config(keys, policy, extra), env=e)

    go.keys = keys
    go.policy = policy
    return go


def agent_token(s, role="developer", agent=None):
    agent = agent or s.admin_request("POST", "/api/agents", {"name": "runner", "role": role, "created_by": "e2e"}, token=ADMIN).json()["agent_id"]
    r = s.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "30m"}, token=ADMIN)
    assert r.status_code == 201, r.text
    return agent, r.json()["token"]


def api(s, method, path, body=None, token=ADMIN, **kw):
    headers = kw.pop("headers", {})
    headers.setdefault("Authorization", f"Bearer {token}")
    return requests.request(method, f"{s.admin_url}{path}", json=body, headers=headers, timeout=10, **kw)


def new_run(s, token=ADMIN, **body):
    body.setdefault("name", "run")
    r = api(s, "POST", "/api/runs", body, token=token)
    assert r.status_code == 201, r.text
    run = r.json()
    assert api(s, "POST", f"/api/runs/{run['id']}/start", token=token).status_code == 200
    return run["id"]


def search(s, token, run, q="coffee", **kw):
    return requests.get(f"http://serpapi.com/search?q={q}", proxies={"http": s.proxy_url_with(token)},
                        headers={"X-Run-Id": run, **kw.pop("headers", {})}, timeout=10, **kw)


# ---------------------------------------------------------------- the original's integration flow


def test_integration_flow_with_real_sse_clients(start):
    s = start()
    agent, tok = agent_token(s)
    body = {"name": "research", "input": {"topic": "coffee"}, "tags": ["e2e"], "client_token": "flow-token-1",
            "budget": {"max_calls": 100}}
    first = api(s, "POST", "/api/runs", body, token=tok)
    assert first.status_code == 201 and first.json()["idempotent"] is False
    again = api(s, "POST", "/api/runs", body, token=tok)
    assert again.status_code == 200 and again.json()["idempotent"] is True and again.json()["id"] == first.json()["id"]
    run = first.json()["id"]
    assert first.json()["agent_id"] == agent and first.json()["status"] == "created"

    assert api(s, "POST", f"/api/runs/{run}/start", token=tok).json()["status"] == "running"
    auth = {"Authorization": f"Bearer {tok}"}
    live = SSE(f"{s.admin_url}/api/runs/{run}/events", auth)
    assert live.status == 200 and live.headers["content-type"].startswith("text/event-stream")
    curl = subprocess.Popen(["curl", "-sN", "-H", f"Authorization: Bearer {ADMIN}", f"{s.admin_url}/api/runs/{run}/events"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    # Tool calls through the forward proxy and through the official openai package (base_url, run header).
    for q in ["a", "b"]:
        assert search(s, tok, run, q).status_code == 200
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=tok, max_retries=0, default_headers={"X-Run-Id": run})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert reply.choices
    live.wait_for(lambda e: e["event"] == "tool.call" and e["data"]["tool"] == "openai")

    # Cancel mid-run: 202, then 409.
    cancelled = api(s, "POST", f"/api/runs/{run}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    again = api(s, "POST", f"/api/runs/{run}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "run_already_cancelled"
    assert search(s, tok, run).json()["code"] == "run_cancelled"
    assert live.done.wait(5), "the stream did not end after the final event"
    out, _ = curl.communicate(timeout=5)

    events = live.events
    types = [e["event"] for e in events]
    assert types[0] == "run.created" and types[-1] == "run.cancelled" and events[-1]["data"]["final"] is True
    assert types.count("tool.call") == 3 and "run.running" in types
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # curl saw the same stream.
    assert [l.split(": ", 1)[1] for l in out.decode().splitlines() if l.startswith("id: ")] == [e["id"] for e in events]
    for e in events:
        if e["event"] == "tool.call":
            d = e["data"]
            assert set(d) >= {"tool", "action", "status", "outcome", "duration_ms", "bytes_out", "cost_usd"}
            assert "q=" not in json.dumps(d) and tok not in json.dumps(d)

    # Resume with Last-Event-ID (header, then query): exactly the events after it.
    for cut in [1, 3]:
        resumed = SSE(f"{s.admin_url}/api/runs/{run}/events", auth, last_event_id=events[cut]["id"])
        assert resumed.done.wait(5)
        assert [e["id"] for e in resumed.events] == [e["id"] for e in events[cut + 1:]]
    q = requests.get(f"{s.admin_url}/api/runs/{run}/events?last_event_id={events[-2]['id']}", headers=auth, timeout=5)
    assert [l for l in q.text.splitlines() if l.startswith("id: ")] == [f"id: {events[-1]['id']}"]

    state = api(s, "GET", f"/api/runs/{run}").json()
    assert state["status"] == "cancelled" and state["ledger"]["calls"] == 3 and state["ledger"]["serpapi_searches"] == 2
    assert state["ledger"]["openai_tokens"] > 0 and state["reserved"]["calls"] == 0
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_runs_total", state="created") == 1
    assert metric(m, "gateway_runs_total", state="cancelled") == 1
    assert metric(m, "gateway_idempotency_hits_total") == 1
    assert metric(m, "gateway_run_cancellations_total", reason="api") == 1
    assert metric(m, "gateway_sse_events_total") >= 2 * len(events)
    assert metric(m, "gateway_sse_connections") == 0
    assert run not in m and not re.search(r"run_[0-9a-f]{24}", m), "a run id in a metric label"


def test_unknown_foreign_and_unstarted_runs_are_refused_with_their_own_codes(start):
    s = start()
    _, tok = agent_token(s)
    _, other = agent_token(s)
    r = search(s, tok, "run_0123456789abcdef01234567")
    assert r.status_code == 404 and r.json()["code"] == "run_not_found"
    assert search(s, tok, "not-a-run").json()["code"] == "invalid_parameter"
    mine = api(s, "POST", "/api/runs", {"name": "mine"}, token=tok).json()["id"]
    assert search(s, tok, mine).json()["code"] == "run_not_started"
    api(s, "POST", f"/api/runs/{mine}/start", token=tok)
    r = search(s, other, mine)
    assert r.status_code == 403 and r.json()["code"] == "run_forbidden"
    # The other agent cannot see or stop it either; unknown runs are never created on the fly.
    assert api(s, "GET", f"/api/runs/{mine}", token=other).status_code == 404
    assert api(s, "POST", f"/api/runs/{mine}/cancel", token=other).status_code == 404
    assert api(s, "GET", "/api/runs/run_0123456789abcdef01234567/events").status_code == 404
    assert api(s, "GET", "/api/runs/run_0123456789abcdef01234567").status_code == 404
    # A token bound to a run acts only for it.
    bound = s.admin_request("POST", f"/api/agents/{api(s, 'GET', f'/api/runs/{mine}').json()['agent_id']}/tokens",
                            {"ttl": "10m", "run_id": mine}, token=ADMIN).json()["token"]
    r = requests.get("http://serpapi.com/search?q=bound", proxies={"http": s.proxy_url_with(bound)}, timeout=10)
    assert r.status_code == 200
    assert api(s, "GET", f"/api/runs/{mine}").json()["ledger"]["calls"] == 1
    other_run = new_run(s, token=tok)
    r = search(s, bound, other_run)
    assert r.status_code == 403 and r.json()["code"] == "run_forbidden"
    # The run header never reaches the upstream (mock here: the access line carries it instead).
    line = s.wait_for_log(lambda l: l.get("msg") == "access" and l.get("run_id") == mine and l.get("status") == 200)
    assert line["outcome"] == "ok"


# ---------------------------------------------------------------- one ledger across tools


def test_mixed_calls_of_all_four_tools_until_each_dimension_runs_out(start):
    s = start()
    _, tok = agent_token(s)
    run = new_run(s, budget={"max_serpapi_searches": 2, "max_emails": 1, "max_openai_tokens": 300, "max_calls": 9})
    px = {"http": s.proxy_url_with(tok)}
    H = {"X-Run-Id": run}
    assert search(s, tok, run, "1").status_code == 200
    assert search(s, tok, run, "2").status_code == 200
    r = search(s, tok, run, "3")
    assert r.status_code == 429 and r.json()["code"] == "run_budget_exhausted" and r.json()["dimension"] == "serpapi_searches"
    import base64
    email = {"raw": base64.urlsafe_b64encode(b"To: a@example.com\r\nSubject: hi\r\n\r\nhello").decode()}
    assert requests.post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", json=email, headers={**H, "X-Agent-Token": tok}, timeout=10).status_code == 200
    # Another email (the same one again would be replayed from the idempotency ledger, not sent).
    email2 = {"raw": base64.urlsafe_b64encode(b"To: a@example.com\r\nSubject: hi again\r\n\r\nhello").decode()}
    r = requests.post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", json=email2, headers={**H, "X-Agent-Token": tok}, timeout=10)
    assert r.json()["dimension"] == "emails"
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json=chat, headers={**H, "Authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 429 and r.json()["dimension"] == "openai_tokens"
    chat["max_tokens"] = 50
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json=chat, headers={**H, "Authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 200
    used = r.json()["usage"]["total_tokens"]
    assert requests.get("http://example.com/page", proxies=px, headers=H, timeout=10).status_code == 200
    state = api(s, "GET", f"/api/runs/{run}").json()
    led = state["ledger"]
    # Refused calls cost nothing; every accepted call is counted once, tokens at the answer's real usage.
    assert led["calls"] == 5 and led["serpapi_searches"] == 2 and led["emails"] == 1 and led["openai_tokens"] == used
    assert led["fetch_bytes"] > 0
    assert state["reserved"] == {k: 0 for k in state["reserved"]}
    expected = 2 * 0.01 + 0.002 + led["fetch_bytes"] / 1048576 * 1.0
    assert abs(led["cost_usd"] - expected) < 0.0002 + 0.00001 * used
    # Calls run out too, and the budget never resets.
    for i in range(4):
        search(s, tok, run, f"x{i}")
    r = search(s, tok, run, "last")
    assert r.status_code == 429 and r.json()["dimension"] in ("calls", "serpapi_searches")
    time.sleep(1.1)
    assert search(s, tok, run, "later").status_code == 429
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_run_budget_exhausted_total", dimension="serpapi_searches") >= 1
    assert metric(m, "gateway_run_budget_exhausted_total", dimension="emails") == 1


def test_a_cost_budget_bounds_what_a_download_may_take(pki, http_upstream, start):
    size = 3 * 1048576
    http_upstream.routes["/big"] = lambda h, rec: (h.send_response(200), h.send_header("Content-Length", str(size)),
                                                   h.end_headers(), h.wfile.write(b"x" * size))

    def chunked(h, rec):
        send, end = start_chunked(h, content_type="application/octet-stream")
        for _ in range(48):
            send(b"y" * 65536)
        end()

    http_upstream.routes["/stream"] = chunked
    cfg = runs_config(start.keys, start.policy, 'egress: {allow_cidrs: ["127.0.0.0/8"]}\ntools:\n  http_fetch: {mode: live, timeout: 5s}\n')
    s = start(config=cfg)
    _, tok = agent_token(s)
    H = {"X-Agent-Token": tok}
    # $1 per MB, $1.50 to spend. An answer that declares 3 MB is refused before its head.
    run = new_run(s, budget={"max_cost_usd": 1.5})
    H["X-Run-Id"] = run
    r = requests.get(f"{s.proxy_url}/fetch", params={"url": f"{http_upstream.base_url}/big"}, headers=H, timeout=10)
    assert r.status_code == 429 and r.json()["code"] == "run_budget_exhausted" and r.json()["dimension"] == "fetch_bytes"
    # One that does not declare its size is cut at what the run can pay for.
    with pytest.raises(requests.exceptions.RequestException):
        r = requests.get(f"{s.proxy_url}/fetch", params={"url": f"{http_upstream.base_url}/stream"}, headers=H, timeout=10)
        r.content
    time.sleep(0.3)
    led = api(s, "GET", f"/api/runs/{run}").json()["ledger"]
    assert 0 < led["fetch_bytes"] <= 1572864 and led["cost_usd"] <= 1.5
    # A fetch budget bounds bytes the same way; nothing more once it is spent.
    run2 = new_run(s, budget={"max_fetch_bytes": 100_000})
    H["X-Run-Id"] = run2
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{s.proxy_url}/fetch", params={"url": f"{http_upstream.base_url}/stream"}, headers=H, timeout=10).content
    time.sleep(0.3)
    assert api(s, "GET", f"/api/runs/{run2}").json()["ledger"]["fetch_bytes"] == 100_000
    r = requests.get(f"{s.proxy_url}/fetch", params={"url": f"{http_upstream.base_url}/stream"}, headers=H, timeout=10)
    assert r.status_code == 429 and r.json()["dimension"] == "fetch_bytes"


def test_a_child_run_cannot_outspend_its_parent(start):
    s = start()
    _, tok = agent_token(s)
    parent = new_run(s, token=tok, budget={"max_calls": 3})
    child = api(s, "POST", "/api/runs", {"name": "child", "parent_run_id": parent, "budget": {"max_calls": 50}}, token=tok).json()
    assert child["parent_run_id"] == parent and child["id"].startswith(parent + ".")
    api(s, "POST", f"/api/runs/{child['id']}/start", token=tok)
    codes = [search(s, tok, child["id"], f"c{i}").status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert api(s, "GET", f"/api/runs/{parent}").json()["ledger"]["calls"] == 3
    r = search(s, tok, child["id"], "again").json()
    assert r["dimension"] == "calls" and r["run_id"] == parent


@pytest.mark.parametrize("role", ["developer", "budgeted"])  # budgeted: the token budget reads the same answer
def test_a_streamed_openai_answer_settles_to_its_real_usage(pki, https_upstream, start, role):
    def stream(h, rec):
        body = json.loads(rec.body)
        assert body["stream_options"]["include_usage"] is True
        send, end = start_chunked(h)
        for part in ["Hel", "lo"]:
            send(sse_chunk(part))
        send(sse_chunk(usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}))
        send("data: [DONE]\n\n")
        end()

    https_upstream.routes["/v1/chat/completions"] = stream
    cfg = runs_config(start.keys, start.policy, f"upstream: {{ca_bundle: {pki.ca_pem}}}\ntools:\n  openai: {{mode: live, base_url: \"{https_upstream.base_url}\"}}\n")
    s = start(config=cfg, env=LIVE_ENV)
    _, tok = agent_token(s, role=role)
    run = new_run(s, budget={"max_openai_tokens": 5000})
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=tok, max_retries=0, default_headers={"X-Run-Id": run})
    # The openai package's own README loop: every chunk the agent gets has a choice. The usage chunk the
    # sidecar asked for on its behalf is read for the ledger, not passed on.
    text = ""
    for c in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1000, stream=True):
        text += c.choices[0].delta.content or ""
    assert text == "Hello"

    def settled(tokens):
        deadline = time.time() + 3
        while time.time() < deadline and api(s, "GET", f"/api/runs/{run}").json()["ledger"]["openai_tokens"] != tokens:
            time.sleep(0.05)
        return api(s, "GET", f"/api/runs/{run}").json()

    led = settled(42)
    assert led["ledger"]["openai_tokens"] == 42 and led["reserved"]["openai_tokens"] == 0
    assert abs(led["ledger"]["cost_usd"] - (30 * 0.001 + 12 * 0.002) / 1000) < 1e-6
    # An agent that asks for the usage itself gets it.
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1000,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 42
    assert settled(84)["ledger"]["openai_tokens"] == 84


def test_the_ledger_is_exact_across_three_sidecars_on_one_redis(start):
    redis = Redis()
    try:
        fleet = [start(redis.url) for _ in range(3)]
        _, tok = agent_token(fleet[0])
        run = new_run(fleet[0], budget={"max_serpapi_searches": 50})
        for s in fleet:  # the agent's registration reaches every sidecar through pub/sub
            deadline = time.time() + 5
            while search(s, tok, "run_0123456789abcdef01234567").status_code == 401 and time.time() < deadline:
                time.sleep(0.05)

        def one(i):
            return search(fleet[i % 3], tok, run, f"q{i}").status_code

        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            codes = list(pool.map(one, range(300)))
        assert codes.count(200) == 50 and codes.count(429) == 250
        time.sleep(0.3)
        state = api(fleet[1], "GET", f"/api/runs/{run}").json()
        assert state["ledger"]["serpapi_searches"] == 50 and state["ledger"]["calls"] == 50 and state["reserved"]["calls"] == 0
    finally:
        redis.kill()


# ---------------------------------------------------------------- loop breaker


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_finished_calls_of_a_run_do_not_stay_in_memory(start):
    """Each call of a run registers how to abort it; those closures reach the call's own stages, which
    hold the call. Kept after the call ended, every finished call of a run (its request, record and
    buffers) stayed in memory: 3-10 KB per call, gigabytes under load. 4 000 calls must not grow the
    process by more than a few MB. (The response cache is off: it keeps up to `max_bytes` by design.)"""
    s = start(extra="tools:\n  serpapi: {cache_ttl: 0s}\n")
    _, token = agent_token(s)
    run = new_run(s, token=token)

    def calls(offset, n):
        with requests.Session() as session:
            session.proxies = {"http": s.proxy_url_with(token)}
            for i in range(n):
                r = session.get(f"http://serpapi.com/search?q=leak-{offset}-{i}", headers={"X-Run-Id": run}, timeout=10)
                assert r.status_code == 200, r.text

    def load(n, base):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(calls, base + k * n, n) for k in range(8)]:
                f.result()

    load(100, 0)  # warm: pools, caches and allocator arenas at their working size
    before = rss_anon_kb(s.proc.pid)
    load(500, 10_000)
    grown = rss_anon_kb(s.proc.pid) - before
    assert grown < 6_000, f"anonymous memory grew by {grown} kB over 4 000 finished calls of one run"
    assert api(s, "GET", f"/api/runs/{run}").json()["ledger"]["calls"] == 4800


def test_the_loop_breaker_pauses_a_repeating_agent_and_spares_a_varied_one(start):
    s = start()
    _, looper = agent_token(s, role="looper")
    run = new_run(s, token=looper)
    live = SSE(f"{s.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"})
    codes = [search(s, looper, run, "same").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
    r = search(s, looper, run, "something else")
    assert r.status_code == 429 and r.json()["code"] == "run_loop_detected"
    live.wait_for(lambda e: e["event"] == "run.loop_detected")
    live.wait_for(lambda e: e["event"] == "run.paused")
    assert api(s, "GET", f"/api/runs/{run}").json()["status"] == "paused"
    assert api(s, "POST", f"/api/runs/{run}/resume").json()["status"] == "running"
    assert search(s, looper, run, "after resume").status_code == 200
    live.close()

    # A→B→A→B… trips it too.
    cyc = new_run(s, token=looper)
    codes = [search(s, looper, cyc, "AB"[i % 2]).status_code for i in range(8)]
    assert 429 in codes and codes.index(429) <= 6
    assert api(s, "GET", f"/api/runs/{cyc}").json()["status"] == "paused"

    # A normal agent with varied calls never does.
    ok = new_run(s, token=looper)
    for i in range(40):
        assert search(s, looper, ok, f"topic-{i % 13}-{i // 13}").status_code == 200
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_run_loops_detected_total", action="pause") == 2


def test_polling_a_background_response_is_not_a_loop(start):
    """The official SDK's way to wait for a background response — retrieve it every few seconds — is the same
    call many times by design: counted on the run, never a loop; creating one again and again still is."""
    import openai
    s = start()
    _, looper = agent_token(s, role="looper")
    run = new_run(s, token=looper)
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=looper, max_retries=0, default_headers={"X-Run-Id": run})
    made = client.responses.create(model="gpt-4o-mini", input="deep research", background=True)
    for _ in range(12):
        assert client.responses.retrieve(made.id).status == "completed"
        assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert api(s, "GET", f"/api/runs/{run}").json()["status"] == "running"
    for _ in range(4):  # five creations of the same response in all
        client.responses.create(model="gpt-4o-mini", input="deep research", background=True)
    with pytest.raises(openai.RateLimitError) as e:
        client.responses.create(model="gpt-4o-mini", input="deep research", background=True)
    assert e.value.body["code"] == "run_loop_detected"


def test_the_loop_breaker_can_cancel_instead(start):
    s = start()
    _, tok = agent_token(s, role="canceller")
    run = new_run(s, token=tok)
    codes = [search(s, tok, run, "same").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 409]
    state = api(s, "GET", f"/api/runs/{run}").json()
    assert state["status"] == "cancelled" and state["reason"].startswith("loop")


# ---------------------------------------------------------------- kill switch


class SlowUpstream(LoopbackServer):
    """A plain HTTP server whose answers take `delay` seconds; records when each client went away."""

    def __init__(self, delay=5.0):
        self.delay = delay
        self.closed_at = []
        super().__init__()

    def _serve(self, c):
        c.settimeout(0.02)
        data = b""
        start = time.time()
        while time.time() - start < self.delay:
            try:
                chunk = c.recv(65536)
                if not chunk and data:
                    self.closed_at.append(time.time())
                    return
                data += chunk
            except socket.timeout:
                pass
            except OSError:
                self.closed_at.append(time.time())
                return
        body = b'{"organic_results": []}'
        try:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        c.close()


def test_kill_switch_aborts_in_flight_calls_within_100ms_on_every_sidecar(start):
    redis = Redis()
    slow = SlowUpstream(delay=8)
    try:
        extra = f'tools:\n  serpapi: {{mode: live, base_url: "http://127.0.0.1:{slow.port}", timeout: 20s}}\n'
        a = start(redis.url, extra=extra, env=LIVE_ENV)
        b = start(redis.url, extra=extra, env=LIVE_ENV)
        _, tok = agent_token(a)
        run = new_run(a, budget={"max_calls": 100})
        results = {}

        def agent_loop(s, name):
            # An agent making slow calls, one after another, until refused.
            out = []
            while True:
                t0 = time.time()
                r = requests.get(f"{s.proxy_url}/serpapi/search?q=slow", headers={"X-Agent-Token": tok, "X-Run-Id": run}, timeout=30)
                out.append((r.status_code, r.json().get("code"), t0, time.time()))
                if r.status_code != 200:
                    break
            results[name] = out

        threads = [threading.Thread(target=agent_loop, args=(s, n)) for s, n in [(a, "a"), (b, "b")]]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while not _both_in_flight(a, b) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        cancelled_at = time.time()
        assert api(b, "POST", f"/api/runs/{run}/cancel").status_code == 202
        for t in threads:
            t.join(10)
        for name in ("a", "b"):
            status, code, _, ended = results[name][-1]
            assert (status, code) == (409, "run_cancelled"), results[name]
            assert ended - cancelled_at < 0.1 + 0.05, f"{name}: aborted {ended - cancelled_at:.3f}s after the cancel"
        # The upstream connections were closed, not left to finish.
        time.sleep(0.5)
        assert len(slow.closed_at) >= 2 and all(t - cancelled_at < 1.0 for t in slow.closed_at[-2:])
        # Every later call is refused, on both sidecars.
        for s in (a, b):
            r = requests.get(f"{s.proxy_url}/serpapi/search?q=again", headers={"X-Agent-Token": tok, "X-Run-Id": run}, timeout=5)
            assert r.status_code == 409 and r.json()["code"] == "run_cancelled"
        m = requests.get(f"{a.admin_url}/metrics", timeout=5).text + requests.get(f"{b.admin_url}/metrics", timeout=5).text
        assert sum(float(l.rsplit(" ", 1)[1]) for l in m.splitlines() if l.startswith("gateway_killswitch_aborts_total ")) == 2
        # A sidecar that starts later reads the stored state.
        c = start(redis.url, extra=extra, env=LIVE_ENV)
        deadline = time.time() + 5
        while True:
            r = requests.get(f"{c.proxy_url}/serpapi/search?q=late", headers={"X-Agent-Token": tok, "X-Run-Id": run}, timeout=5)
            if r.status_code != 401 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 409 and r.json()["code"] == "run_cancelled"
    finally:
        slow.close()
        redis.kill()


def _both_in_flight(a, b):
    for s in (a, b):
        m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
        if metric(m, "gateway_requests_in_flight") < 1:
            return False
    return True


def test_max_duration_fails_the_run_and_stops_its_calls(start):
    s = start()
    _, tok = agent_token(s)
    run = new_run(s, budget={"max_duration": 1})
    assert search(s, tok, run).status_code == 200
    time.sleep(1.5)
    state = api(s, "GET", f"/api/runs/{run}").json()
    assert state["status"] == "failed" and state["reason"] == "max_duration"
    r = search(s, tok, run)
    assert r.status_code == 409 and r.json()["code"] == "run_cancelled"
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_run_cancellations_total", reason="max_duration") == 1


# ---------------------------------------------------------------- resume across restarts and sidecars


def test_a_stream_resumes_after_a_restart_missing_nothing(tmp_path, start):
    state = tmp_path / "kept-state"
    s = start(state=state)
    _, tok = agent_token(s)
    run = new_run(s, token=tok)
    for i in range(3):
        assert search(s, tok, run, f"before{i}").status_code == 200
    first = SSE(f"{s.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"})
    first.wait_for(lambda e: e["event"] == "tool.call" and len([x for x in first.events if x["event"] == "tool.call"]) == 3)
    seen = list(first.events)
    first.close()
    s.stop()

    s2 = start(state=state)
    for i in range(2):
        assert search(s2, tok, run, f"after{i}").status_code == 200
    assert api(s2, "POST", f"/api/runs/{run}/complete").status_code == 200
    resumed = SSE(f"{s2.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"}, last_event_id=seen[-1]["id"])
    assert resumed.done.wait(5)
    ids = [int(e["id"]) for e in seen + resumed.events]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert [e["event"] for e in resumed.events] == ["tool.call", "tool.call", "run.completed"]
    assert api(s2, "GET", f"/api/runs/{run}").json()["ledger"]["calls"] == 5


def test_sigterm_ends_open_event_streams_at_once_and_the_client_resumes(tmp_path, start):
    """Streams still open when the sidecar is told to stop: graceful shutdown waited for them to end,
    which a running run's stream never does, so the process hung until killed. They now end at once
    (exit 0 well within the drain), and each client, reconnecting with its Last-Event-ID, misses nothing."""
    state = tmp_path / "kept-state"
    s = start(state=state)
    _, tok = agent_token(s)
    run = new_run(s, token=tok)
    assert search(s, tok, run, "before").status_code == 200
    streams = [SSE(f"{s.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"}) for _ in range(3)]
    for st in streams:
        st.wait_for(lambda e: e["event"] == "tool.call")
    started = time.monotonic()
    assert s.stop(timeout=15) == 0
    assert time.monotonic() - started < 3
    assert all(st.done.wait(2) for st in streams)
    s2 = start(state=state)
    assert search(s2, tok, run, "after").status_code == 200
    assert api(s2, "POST", f"/api/runs/{run}/complete").status_code == 200
    seen = streams[0].events
    resumed = SSE(f"{s2.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"}, last_event_id=seen[-1]["id"])
    assert resumed.done.wait(5)
    ids = [int(e["id"]) for e in seen + resumed.events]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert [e["event"] for e in resumed.events] == ["tool.call", "run.completed"]


def test_a_client_that_goes_away_frees_its_stream_place_at_once(start):
    """A stream whose client closed its connection was noticed only at its next write (a heartbeat, up
    to two heartbeats later) and held one of the run's max_streams_per_run places until then: a client
    reconnecting at once was refused 429. The connection's close now ends the stream."""
    import socket
    s = start(config=runs_config(start.keys, start.policy).replace("heartbeat: 500ms, max_streams_per_run: 4",
                                                                    "heartbeat: 60s, max_streams_per_run: 1"))
    run = new_run(s)
    host, port = s.admin.rsplit(":", 1)
    # A close with unread bytes is a reset; a close or shutdown with none is a FIN — a half-close, which
    # the admin server allows (the stream went on until a heartbeat write failed). Both end the stream.
    for how in ("shutdown", "close", "shutdown", "reset"):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(f"GET /api/runs/{run}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n".encode())
        got = b""
        while b"run.running" not in got:
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
        if how == "shutdown":
            sock.shutdown(socket.SHUT_WR)
        elif how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        if how != "shutdown":
            sock.close()
        deadline = time.monotonic() + 2
        while metric(requests.get(f"{s.admin_url}/metrics", timeout=5).text, "gateway_sse_connections") != 0:
            assert time.monotonic() < deadline, f"the stream outlived its client ({how})"
            time.sleep(0.05)
        sock.close()
    # Each round's 200 was a place freed by the round before (the cap is one stream).


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_an_agent_holds_at_most_max_open_per_agent_unfinished_runs(start, store):
    """Every unfinished run is kept (the embedded store holds them in memory): an agent creating runs it
    never finished grew the sidecar without bound. Its next create past the cap is 429; a finished run
    frees a place; the operator is not capped."""
    redis = Redis() if store == "redis" else None
    try:
        s = start(redis_url=redis.url if redis else None,
                  config=runs_config(start.keys, start.policy).replace("max_streams_per_run: 4}", "max_streams_per_run: 4, max_open_per_agent: 3}"))
        _, tok = agent_token(s)
        made = [api(s, "POST", "/api/runs", {"name": f"r{i}", "client_token": f"create-key-{i}"}, token=tok) for i in range(3)]
        assert all(r.status_code == 201 for r in made)
        over = api(s, "POST", "/api/runs", {"name": "r3"}, token=tok)
        assert over.status_code == 429 and over.json()["code"] == "too_many_open_runs"
        # At the cap, a replay of a create that succeeded (a client retrying after a lost answer) is
        # answered with its run, a changed body is still a conflict, and a new key is refused.
        replay = api(s, "POST", "/api/runs", {"name": "r1", "client_token": "create-key-1"}, token=tok)
        assert replay.status_code == 200 and replay.json()["idempotent"] is True and replay.json()["id"] == made[1].json()["id"]
        assert api(s, "POST", "/api/runs", {"name": "other", "client_token": "create-key-1"}, token=tok).json()["code"] == "idempotency_conflict"
        assert api(s, "POST", "/api/runs", {"name": "r3", "client_token": "create-key-3"}, token=tok).status_code == 429
        assert api(s, "POST", f"/api/runs/{made[0].json()['id']}/cancel", token=tok).status_code == 202
        assert api(s, "POST", "/api/runs", {"name": "r4"}, token=tok).status_code == 201
        assert api(s, "POST", "/api/runs", {"name": "r5"}, token=tok).status_code == 429
        assert api(s, "POST", "/api/runs", {"name": "ops"}).status_code == 201  # the admin token
    finally:
        if redis:
            redis.kill()


def test_a_stream_resumes_on_another_sidecar(start):
    redis = Redis()
    try:
        a, b = start(redis.url), start(redis.url)
        _, tok = agent_token(a)
        run = new_run(a, token=tok)
        on_a = SSE(f"{a.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"})
        deadline = time.time() + 5
        while search(b, tok, run, "warm").status_code == 401 and time.time() < deadline:
            time.sleep(0.05)
        for i in range(3):
            assert search(b, tok, run, f"x{i}").status_code == 200  # calls on b appear on a's stream
        on_a.wait_for(lambda e: e["event"] == "tool.call" and len([x for x in on_a.events if x["event"] == "tool.call"]) >= 4)
        cut = on_a.events[2]["id"]
        on_a.close()
        api(a, "POST", f"/api/runs/{run}/complete")
        on_b = SSE(f"{b.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"}, last_event_id=cut)
        assert on_b.done.wait(5)
        full = SSE(f"{b.admin_url}/api/runs/{run}/events", {"Authorization": f"Bearer {ADMIN}"})
        assert full.done.wait(5)
        ids = [e["id"] for e in full.events]
        assert [e["id"] for e in on_b.events] == ids[ids.index(cut) + 1:]
        assert full.events[-1]["event"] == "run.completed"
    finally:
        redis.kill()


# ---------------------------------------------------------------- idempotency and the control plane


def test_idempotency_races_conflicts_and_other_callers(start):
    s = start()
    _, tok = agent_token(s)
    _, other = agent_token(s)
    body = {"name": "race", "client_token": "race-token-50"}
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: api(s, "POST", "/api/runs", body, token=tok), range(50)))
    assert sorted(r.status_code for r in replies) == [200] * 49 + [201]
    assert len({r.json()["id"] for r in replies}) == 1
    conflict = api(s, "POST", "/api/runs", {"name": "different", "client_token": "race-token-50"}, token=tok)
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"
    theirs = api(s, "POST", "/api/runs", body, token=other)
    assert theirs.status_code == 201 and theirs.json()["id"] != replies[0].json()["id"]
    assert theirs.json()["agent_id"] != replies[0].json()["agent_id"]
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_idempotency_hits_total") == 49


def test_control_plane_bad_input(start):
    s = start(extra='admin: {cors_origins: ["https://console.example.com"], rate_limit: {per_second: 20, burst: 40}}\n')
    url = f"{s.admin_url}/api/runs"
    H = {"Authorization": f"Bearer {ADMIN}"}
    r = requests.post(url, data=b'{"name": ', headers={**H, "Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = requests.post(url, data=b'{"name": "x"}', headers={**H, "Content-Type": "text/plain"}, timeout=5)
    assert r.status_code == 415
    r = requests.post(url, data=b'{"name": "' + b"x" * 400_000 + b'"}', headers={**H, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    bad = {"name": "n" * 129, "input": {"blob": "y" * 70_000}, "tags": ["t"] * 17, "client_token": "short",
           "budget": {"max_calls": -1, "max_duration": "forever", "max_bananas": 1}, "parent_run_id": "nope", "surprise": 1}
    r = requests.post(url, json=bad, headers=H, timeout=5)
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields >= {"name", "input", "tags", "client_token", "budget.max_calls", "budget.max_duration", "budget.max_bananas",
                      "parent_run_id", "surprise"}
    for tags in (["x" * 65], [1]):
        assert requests.post(url, json={"name": "t", "tags": tags}, headers=H, timeout=5).status_code == 422
    assert requests.post(url, json={"name": "t", "client_token": "bad token!"}, headers=H, timeout=5).status_code == 422
    assert requests.post(url, json=[1, 2], headers=H, timeout=5).status_code == 422
    # A field read as one value, given twice, is refused rather than read by its first line.
    import http.client
    conn = http.client.HTTPConnection(*s.admin.rsplit(":", 1), timeout=5)
    conn.putrequest("GET", "/api/runs")
    conn.putheader("Authorization", f"Bearer {ADMIN}")
    conn.putheader("Authorization", "Bearer x")
    conn.endheaders()
    twice = conn.getresponse()
    assert twice.status == 400 and json.loads(twice.read())["code"] == "ambiguous_header"
    conn.close()
    assert requests.post(url, json={"name": "t"}, timeout=5).status_code == 401
    assert requests.get(f"{url}?status=sleeping", headers=H, timeout=5).status_code == 422
    assert requests.get(f"{url}/run_00/events", headers={**H, "Last-Event-ID": "x"}, timeout=5).status_code == 404
    run = new_run(s)
    assert requests.get(f"{url}/{run}/events", headers={**H, "Last-Event-ID": "not-an-id"}, timeout=5).status_code == 400
    r = requests.get(f"{url}/{run}/events?last_event_id=2", headers={**H, "Last-Event-ID": "1"}, timeout=5)
    assert r.status_code == 400 and r.json()["code"] == "ambiguous_parameter"
    assert requests.get(f"{url}?status=running&status=created", headers=H, timeout=5).json()["code"] == "ambiguous_parameter"
    # The per-run cap on streams (4 in this configuration).
    streams = [SSE(f"{url}/{run}/events", H) for _ in range(4)]
    r = requests.get(f"{url}/{run}/events", headers=H, timeout=5)
    assert r.status_code == 429 and r.json()["code"] == "too_many_streams" and int(r.headers["Retry-After"]) >= 1
    # Heartbeats keep idle streams open.
    time.sleep(1.2)
    assert all(x.comments >= 1 for x in streams)
    for x in streams:
        x.close()
    # CORS: the configured origin only.
    pre = requests.options(url, headers={"Origin": "https://console.example.com", "Access-Control-Request-Method": "POST"}, timeout=5)
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://console.example.com"
    pre = requests.options(url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=5)
    assert pre.status_code == 403 and "Access-Control-Allow-Origin" not in pre.headers
    r = requests.get(f"{url}/{run}", headers={**H, "Origin": "https://evil.example"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in r.headers
    r = requests.get(f"{url}/{run}", headers={**H, "Origin": "https://console.example.com"}, timeout=5)
    assert r.headers["Access-Control-Allow-Origin"] == "https://console.example.com"
    # The per-address rate limit: a burst of 40, then 429 with Retry-After (probes are not limited).
    codes = [requests.get(f"{url}/{run}", headers=H, timeout=5).status_code for _ in range(80)]
    assert 429 in codes
    limited = requests.get(f"{url}/{run}", headers=H, timeout=5)
    if limited.status_code == 429:
        assert limited.json()["code"] == "admin_rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).status_code == 200
