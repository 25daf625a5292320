"""Resilience, chaos and safe egress end to end: the real binary against a fake upstream that fails in
scripted ways, real clients (requests, curl), metrics read from /metrics."""

import base64
import os
import concurrent.futures
import re
import subprocess
import threading
import time

import pytest
import requests

from conftest import BIN, LIVE_ENV, FakeUpstream, Redis, Sidecar, live_config

RESILIENCE = """
resilience:
  retry: {max_attempts: 3, base_delay: 5ms, max_delay: 20ms}
  breaker: {consecutive_failures: 3, minimum_volume: 100, open: 1500ms, max_open: 1500ms}
"""


def metric(s, name, **labels):
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-z_]+)(\{([^}]*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(kv.split("=", 1) for kv in re.findall(r'[a-z_]+="[^"]*"', m.group(3) or ""))
        if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(m.group(4))
            found = True
    return total if found else None


def serp(s, token, q, **kw):
    return requests.get(f"{s.proxy_url}/serpapi/search.json", params={"q": q}, headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})},
                        timeout=10, **kw)


def fetch(s, token, url, **kw):
    return requests.get(f"{s.proxy_url}/fetch", params={"url": url}, headers={"X-Agent-Token": token, **kw.pop("headers", {})}, timeout=10, **kw)


class Switch:
    """A route whose answer the test flips: status, extra headers, delay."""

    def __init__(self, status=200, delay=0.0, headers=()):
        self.status, self.delay, self.headers = status, delay, list(headers)
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, h, rec):
        with self.lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        FakeUpstream.send_json(h, self.status, {"status": self.status, "organic_results": []}, self.headers)


def test_breaker_opens_fast_fails_without_the_network_and_recovers(pki, https_upstream, sidecar_factory):
    route = Switch(503)
    https_upstream.routes["/search"] = route
    s = sidecar_factory(live_config(pki, https_upstream, extra=RESILIENCE).replace(
        "hosts: [serpapi.com], timeout: 3s}", "hosts: [serpapi.com], timeout: 3s, retry_attempts: 1, cache_ttl: 0s}"), env=LIVE_ENV)
    token = s.new_token()
    for i in range(3):
        assert serp(s, token, f"q{i}").status_code == 503
    assert route.calls == 3
    r = serp(s, token, "q-open")
    assert r.status_code == 503
    problem = r.json()
    assert problem["code"] == "breaker_open" and r.headers["Content-Type"].startswith("application/problem+json")
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    assert route.calls == 3, "an open breaker must not touch the network"
    assert metric(s, "gateway_breaker_state", tool="serpapi") == 2
    assert metric(s, "gateway_breaker_fastfail_total", tool="serpapi") >= 1
    transitions = [rec for rec in s.logs("circuit breaker open")]
    assert len(transitions) == 1
    # Recovery: the upstream heals; after the open period one probe closes the breaker.
    route.status = 200
    time.sleep(1.5)  # the open period: 1.5 s ± 20 % jitter; fast-failed calls until then touch nothing
    deadline = time.time() + 3
    while (r := serp(s, token, "probe")).status_code != 200 and time.time() < deadline:
        assert r.json()["code"] == "breaker_open"
        time.sleep(0.05)
    assert r.status_code == 200
    assert route.calls == 4, "exactly one probe went out"
    assert metric(s, "gateway_breaker_state", tool="serpapi") == 0
    assert serp(s, token, "after").status_code == 200
    assert s.logs("circuit breaker closed")


def test_fetch_breakers_are_per_destination_host(pki, http_upstream, sidecar_factory):
    http_upstream.routes["/bad"] = Switch(502)
    good = FakeUpstream(None)
    try:
        s = sidecar_factory(live_config(pki, http_upstream, extra=RESILIENCE), env=LIVE_ENV)
        token = s.new_token()
        # One call makes three attempts (retries), which trips the host's breaker (3 consecutive failures).
        assert fetch(s, token, f"{http_upstream.base_url}/bad").status_code == 502
        assert http_upstream.routes["/bad"].calls == 3
        assert fetch(s, token, f"{http_upstream.base_url}/bad").json()["code"] == "breaker_open"
        # Another destination host (the same machine under another name) has its own, closed breaker.
        r = fetch(s, token, f"http://localhost:{good.port}/fine")
        assert r.status_code == 200, r.text
    finally:
        good.close()


def test_transient_failures_are_retried_and_gmail_never_is(pki, https_upstream, sidecar_factory):
    state = {"n": 0}

    def flaky(h, rec):
        state["n"] += 1
        if state["n"] <= 2:
            return FakeUpstream.send_json(h, 503, {"error": "busy"})
        FakeUpstream.send_json(h, 200, {"organic_results": [1]})

    https_upstream.routes["/search"] = flaky
    sends = Switch(503)
    https_upstream.routes["/gmail/v1/users/me/messages/send"] = sends
    s = sidecar_factory(live_config(pki, https_upstream, extra=RESILIENCE), env=LIVE_ENV)
    token = s.new_token()
    r = serp(s, token, "flaky", headers={"X-Request-Id": "retry-1"})
    assert r.status_code == 200 and r.json()["organic_results"] == [1]
    assert state["n"] == 3
    assert s.access("retry-1")["retries"] == 2
    assert metric(s, "gateway_retries_total", tool="serpapi", reason="5xx") == 2
    assert metric(s, "gateway_retry_success_total", tool="serpapi") == 1

    raw = base64.urlsafe_b64encode(b"To: a@example.com\r\nSubject: hi\r\n\r\nhello").decode().rstrip("=")
    r = requests.post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", json={"raw": raw},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 503
    assert sends.calls == 1, "a send must never be retried"


def test_an_upstream_that_says_do_not_retry_or_answers_a_permanent_5xx_is_not_retried(pki, https_upstream, sidecar_factory):
    calls = {"n": 0}

    def refuse(h, rec):
        calls["n"] += 1
        q = rec.path.split("q=")[1].split("&")[0]
        if q == "told":
            return FakeUpstream.send_json(h, 503, {"error": "no"}, extra_headers=[("x-should-retry", "false")])
        FakeUpstream.send_json(h, int(q), {"error": "permanent"})

    https_upstream.routes["/search"] = refuse
    # A breaker that opens only on a long run of failures: each answer here is one.
    s = sidecar_factory(live_config(pki, https_upstream, extra=RESILIENCE.replace("consecutive_failures: 3", "consecutive_failures: 50")), env=LIVE_ENV)
    token = s.new_token()
    for q, status in [("told", 503), ("508", 508), ("505", 505), ("511", 511)]:
        calls["n"] = 0
        assert serp(s, token, q).status_code == status
        assert calls["n"] == 1, q
    calls["n"] = 0
    assert serp(s, token, "503").status_code == 503 and calls["n"] == 3  # a plain 503 still is


def test_openai_429_honours_retry_after_ms(pki, https_upstream, sidecar_factory):
    state = {"n": 0, "times": []}

    def limited(h, rec):
        state["n"] += 1
        state["times"].append(time.monotonic())
        if state["n"] == 1:
            return FakeUpstream.send_json(h, 429, {"error": {"message": "slow down"}}, [("retry-after-ms", "300")])
        FakeUpstream.send_json(h, 200, {"id": "c1", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    https_upstream.routes["/v1/chat/completions"] = limited
    s = sidecar_factory(live_config(pki, https_upstream, extra=RESILIENCE), env=LIVE_ENV)
    token = s.new_token()
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200
    assert state["n"] == 2
    assert state["times"][1] - state["times"][0] >= 0.28


def test_cache_hit_miss_and_fetch_cache_control(pki, https_upstream, http_upstream, sidecar_factory):
    search = Switch(200)
    https_upstream.routes["/search"] = search
    http_upstream.routes["/cacheable"] = Switch(200, headers=[("Cache-Control", "max-age=60")])
    http_upstream.routes["/private"] = Switch(200, headers=[("Cache-Control", "private, max-age=60")])
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    a, b = s.new_token(), s.new_token()
    assert serp(s, a, "coffee").headers["X-Cache"] == "MISS"
    r = serp(s, b, "coffee")  # another agent, same normalized query (its key is replaced anyway)
    assert r.headers["X-Cache"] == "HIT" and "Age" in r.headers
    assert serp(s, a, "tea").headers["X-Cache"] == "MISS"
    assert search.calls == 2
    assert "api_key=serp-REAL" in https_upstream.requests[-1].path
    assert metric(s, "gateway_cache_hits_total", tool="serpapi") == 1
    assert metric(s, "gateway_cache_misses_total", tool="serpapi") == 2
    assert metric(s, "gateway_cache_bytes") > 0

    assert [fetch(s, a, f"{http_upstream.base_url}/cacheable").headers["X-Cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert [fetch(s, a, f"{http_upstream.base_url}/private").headers["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]

    # Concurrent misses of one key make one upstream call (single flight).
    search.delay = 0.3
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        marks = list(pool.map(lambda _: serp(s, a, "burst").headers["X-Cache"], range(8)))
    assert marks.count("MISS") == 1 and marks.count("HIT") == 7
    assert search.calls == 3


def test_bulkhead_answers_tool_saturated(pki, https_upstream, sidecar_factory):
    https_upstream.routes["/search"] = Switch(200, delay=0.8)
    cfg = live_config(pki, https_upstream, extra="resilience:\n  bulkhead: {queue: 0, wait: 100ms}\n").replace(
        "hosts: [serpapi.com], timeout: 3s}", "hosts: [serpapi.com], timeout: 3s, max_concurrent: 2, cache_ttl: 0s}")
    s = sidecar_factory(cfg, env=LIVE_ENV)
    token = s.new_token()
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: serp(s, token, f"slow{i}"), range(5)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 503, 503, 503]
    refused = [r for r in results if r.status_code == 503]
    assert all(r.json()["code"] == "tool_saturated" and r.headers["Retry-After"] == "1" for r in refused)
    assert metric(s, "gateway_bulkhead_rejections_total", tool="serpapi") == 3


def test_agent_can_narrow_the_deadline(pki, https_upstream, sidecar_factory):
    https_upstream.routes["/search"] = Switch(200, delay=1.5)
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    # The upstream answers after 1.5 s, inside the tool's 3 s: only the agent's narrowed deadline can
    # make this a 504 (no wall-clock bound needed, which a loaded machine could miss).
    r = serp(s, token, "slow", headers={"X-Request-Timeout": "300ms"})
    assert r.status_code == 504 and r.json()["code"] == "upstream_timeout"
    assert all(rec.header("X-Request-Timeout") is None for rec in https_upstream.requests)


EGRESS_DENIED = [
    "http://169.254.169.254/latest/meta-data/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://127.1/",
    "http://[::ffff:127.0.0.1]/", "http://[::1]/", "http://localhost/", "http://10.0.0.1./", "http://[fd00::1]/",
]


@pytest.fixture(scope="module")
def strict_fetch():
    """A sidecar with http_fetch live and the default egress rules (nothing internal allowed)."""
    s = Sidecar("version: 1\ntools:\n  http_fetch: {mode: live, timeout: 2s}\n")
    yield s, s.new_token()
    s.stop()


@pytest.mark.parametrize("url", EGRESS_DENIED)
def test_egress_denied_for_internal_destinations(url, strict_fetch):
    s, token = strict_fetch
    r = fetch(s, token, url)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "egress_denied"


def test_forward_proxy_fetch_to_loopback_and_own_ports_is_refused(pki, http_upstream, sidecar_factory):
    s = sidecar_factory("version: 1\ntools:\n  http_fetch: {mode: live, timeout: 2s}\n")
    token = s.new_token()
    proxies = {"http": s.proxy_url_with(token)}
    r = requests.get(f"{http_upstream.base_url}/x", proxies=proxies, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "egress_denied"
    assert http_upstream.requests == []
    # Even with loopback allowed, the sidecar's own listeners stay off limits.
    s2 = sidecar_factory(live_config(pki, http_upstream))
    token2 = s2.new_token()
    for target in (s2.admin_url + "/metrics", s2.proxy_url + "/healthz"):
        r = requests.get(target, proxies={"http": s2.proxy_url_with(token2)}, timeout=10)
        assert r.status_code == 403 and r.json()["code"] == "egress_denied", target
    out = subprocess.run(["curl", "-sS", "-x", s.proxy_url, "-U", f"agent:{token}", "http://169.254.169.254/latest/meta-data/"],
                         capture_output=True, text=True, timeout=20)
    assert '"egress_denied"' in out.stdout


def test_redirects_are_not_followed_unless_configured_and_every_hop_is_checked(pki, http_upstream, sidecar_factory):
    def to_metadata(h, rec):
        h.send_response(302)
        h.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def to_final(h, rec):
        h.send_response(301)
        h.send_header("Location", "/final")
        h.send_header("Content-Length", "0")
        h.end_headers()

    http_upstream.routes["/to-metadata"] = to_metadata
    http_upstream.routes["/hop"] = to_final
    s = sidecar_factory(live_config(pki, http_upstream), env=LIVE_ENV)
    token = s.new_token()
    r = fetch(s, token, f"{http_upstream.base_url}/to-metadata", allow_redirects=False)
    assert r.status_code == 302  # passed back to the agent, not followed
    s2 = sidecar_factory(live_config(pki, http_upstream).replace('allow_cidrs: ["127.0.0.0/8"]', 'allow_cidrs: ["127.0.0.0/8"]\n  follow_redirects: 3'),
                         env=LIVE_ENV)
    token2 = s2.new_token()
    assert fetch(s2, token2, f"{http_upstream.base_url}/hop").json()["path"] == "/final"
    r = fetch(s2, token2, f"{http_upstream.base_url}/to-metadata", allow_redirects=False)
    assert r.status_code == 403 and r.json()["code"] == "egress_denied"


def test_chaos_at_run_time_through_the_admin_api(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(live_config(pki, https_upstream, extra=RESILIENCE).replace(
        "hosts: [serpapi.com], timeout: 3s}", "hosts: [serpapi.com], timeout: 3s, retry_attempts: 1, cache_ttl: 0s}"), env=LIVE_ENV)
    token = s.new_token()
    assert requests.get(f"{s.admin_url}/api/chaos", timeout=5).status_code == 401
    assert s.admin_request("GET", "/api/chaos").json()["enabled"] is False
    bad = s.admin_request("PUT", "/api/chaos", {"enabled": True, "tools": {"serpapi": {"error_rate": 2}}})
    assert bad.status_code == 422
    bad = s.admin_request("PUT", "/api/chaos", {"enabled": True, "tools": {"nosuchtool": {"error_rate": 1}}})
    assert bad.status_code == 422 and "tools.nosuchtool" in bad.text
    assert requests.put(f"{s.admin_url}/api/chaos", json={"enabled": True}, timeout=5).status_code == 401

    on = s.admin_request("PUT", "/api/chaos", {"enabled": True, "seed": 1, "tools": {"serpapi": {"error_rate": 1, "error_statuses": [502]}}})
    assert on.status_code == 200 and on.json()["enabled"] is True
    before = len(https_upstream.requests)
    r = serp(s, token, "chaos", headers={"X-Request-Id": "chaos-1"})
    assert r.status_code == 502 and r.headers["X-Chaos-Injected"] == "error"
    assert len(https_upstream.requests) == before, "an injected error never reaches the upstream"
    assert s.access("chaos-1")["chaos"] == "error"
    assert metric(s, "gateway_chaos_injected_total", tool="serpapi", kind="error") == 1
    # Injected failures drive the breaker exactly like real ones.
    serp(s, token, "c2")
    serp(s, token, "c3")
    assert serp(s, token, "c4").json()["code"] == "breaker_open"

    # Latency and truncation; other tools untouched.
    s.admin_request("PUT", "/api/chaos", {"enabled": True, "tools": {"openai": {"truncate_rate": 1}}})
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, headers={"Authorization": f"Bearer {token}"},
                      timeout=10, stream=True)
    assert r.headers.get("X-Chaos-Injected") == "truncate"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        r.content
    # Auto-off after a duration.
    s.admin_request("PUT", "/api/chaos", {"enabled": True, "duration": "300ms", "tools": {"http_fetch": {"error_rate": 1}}})
    time.sleep(0.5)
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert "X-Chaos-Injected" not in r.headers
    assert s.admin_request("PUT", "/api/chaos", {"enabled": False}).json()["enabled"] is False


def test_ff_chaos_on_at_start_and_gmail_excluded(pki, https_upstream, sidecar_factory):
    sends = Switch(200)
    https_upstream.routes["/gmail/v1/users/me/messages/send"] = sends
    cfg = live_config(pki, https_upstream, extra="chaos:\n  seed: 3\n  tools:\n    '*': {error_rate: 1}\n")
    s = sidecar_factory(cfg, env={**LIVE_ENV, "FF_CHAOS": "on"})
    token = s.new_token()
    assert s.admin_request("GET", "/api/chaos").json()["enabled"] is True
    assert serp(s, token, "x").headers.get("X-Chaos-Injected") == "error"
    for i in range(3):
        # Three different emails (identical ones would be replayed from the idempotency ledger).
        raw = base64.urlsafe_b64encode(f"To: a@example.com\r\nSubject: hi {i}\r\n\r\nhello".encode()).decode().rstrip("=")
        r = requests.post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", json={"raw": raw}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200 and "X-Chaos-Injected" not in r.headers
    assert sends.calls == 3


def test_fleet_breaker_and_chaos_reach_sidecars_that_start_later(pki, https_upstream, sidecar_factory, tmp_path):
    redis = Redis()
    try:
        keys = tmp_path / "keys"
        subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
        admin = "adm_resilience_fleet_token_0123456789"

        def start(sid):
            # A long open period: the late sidecar must start while the fleet's breaker is still open.
            slow = RESILIENCE.replace("open: 1500ms, max_open: 1500ms", "open: 20s, max_open: 20s")
            cfg = live_config(pki, https_upstream, extra=slow + f'auth: {{keys_dir: "{keys}"}}\n').replace(
                "hosts: [serpapi.com], timeout: 3s}", "hosts: [serpapi.com], timeout: 3s, retry_attempts: 1, cache_ttl: 0s}")
            return sidecar_factory(cfg, env={**LIVE_ENV, "REDIS_URL": redis.url, "SIDECAR_ADMIN_TOKEN": admin, "SIDECAR_ID": sid,
                                             "SIDECAR_STATE_DIR": str(tmp_path / sid)})

        a = start("sc-a")
        agent = a.admin_request("POST", "/api/agents", {"name": "f", "role": "developer", "created_by": "e2e"}, token=admin).json()["agent_id"]
        token = a.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "10m"}, token=admin).json()["token"]
        https_upstream.routes["/search"] = Switch(503)
        for i in range(3):
            serp(a, token, f"f{i}")
        assert serp(a, token, "open").json()["code"] == "breaker_open"
        # Chaos for the whole fleet, then a sidecar that was not running when either was published.
        assert a.admin_request("PUT", "/api/chaos", {"enabled": True, "fleet": True, "tools": {"openai": {"error_rate": 1}}},
                               token=admin).status_code == 200
        before = len(https_upstream.requests)
        c = start("sc-c")
        deadline = time.time() + 3
        while time.time() < deadline and metric(c, "gateway_breaker_state", tool="serpapi") != 2:
            time.sleep(0.05)
        r = serp(c, token, "late")
        assert r.status_code == 503 and r.json()["code"] == "breaker_open"
        assert len(https_upstream.requests) == before
        assert c.admin_request("GET", "/api/chaos", token=admin).json()["enabled"] is True
        # Fleet chaos without Redis is refused before anything is applied.
        solo = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
        r = solo.admin_request("PUT", "/api/chaos", {"enabled": True, "fleet": True})
        assert r.status_code == 422 and solo.admin_request("GET", "/api/chaos").json()["enabled"] is False
    finally:
        redis.kill()


def test_policy_can_grant_an_internal_range_to_one_role(http_upstream, sidecar_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("""
version: 1
roles:
  developer: {allow: ["*"]}
  intranet:
    allow: ["http_fetch:*"]
    rules:
      - scope: http_fetch:get
        guards: {allow_cidrs: ["127.0.0.0/8"]}
""")
    s = sidecar_factory(f'version: 1\npolicy: {{file: "{policy}"}}\ntools:\n  http_fetch: {{mode: live, timeout: 2s}}\n')
    intranet, developer = s.new_token(role="intranet"), s.new_token(role="developer")
    assert fetch(s, intranet, f"{http_upstream.base_url}/wiki").status_code == 200
    r = fetch(s, developer, f"{http_upstream.base_url}/wiki")
    assert r.status_code == 403 and r.json()["code"] == "egress_denied"
    # The grant never covers the sidecar's own listeners, nor ranges it does not name.
    assert fetch(s, intranet, f"{s.admin_url}/metrics").json()["code"] == "egress_denied"
    assert fetch(s, intranet, "http://169.254.169.254/").json()["code"] == "egress_denied"
    # An invalid range is refused at reload with its field path; the old policy stays.
    r = s.admin_request("PUT", "/api/policy", data="version: 1\nroles:\n  r:\n    allow: [\"http_fetch:*\"]\n    rules:\n      - scope: http_fetch:get\n        guards: {allow_cidrs: [\"10.0.0.0/33\"]}\n",
                        headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and "roles.r.rules[0].guards.allow_cidrs[0]" in r.text
    assert fetch(s, intranet, f"{http_upstream.base_url}/wiki").status_code == 200


def test_shared_cache_one_sidecars_miss_is_the_fleets_hit(pki, https_upstream, sidecar_factory, tmp_path):
    search = Switch(200)
    https_upstream.routes["/search"] = search
    redis = Redis()
    try:
        keys = tmp_path / "keys"
        subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
        admin = "adm_shared_cache_token_0123456789"
        extra = f'resilience:\n  cache: {{shared: true}}\nauth: {{keys_dir: "{keys}"}}\n'

        def start(sid):
            return sidecar_factory(live_config(pki, https_upstream, extra=extra),
                                   env={**LIVE_ENV, "REDIS_URL": redis.url, "SIDECAR_ADMIN_TOKEN": admin, "SIDECAR_ID": sid,
                                        "SIDECAR_STATE_DIR": str(tmp_path / sid)})

        a, b = start("sc-a"), start("sc-b")
        agent = a.admin_request("POST", "/api/agents", {"name": "c", "role": "developer", "created_by": "e2e"}, token=admin).json()["agent_id"]
        token = a.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "10m"}, token=admin).json()["token"]
        assert serp(a, token, "fleetwide").headers["X-Cache"] == "MISS"
        time.sleep(0.2)  # the put is asynchronous
        r = serp(b, token, "fleetwide")
        assert r.status_code == 200 and r.headers["X-Cache"] == "HIT"
        assert search.calls == 1
        assert metric(b, "gateway_cache_shared_hits_total", tool="serpapi") == 1
        # What Redis holds: a digest key (no query in clear) and the upstream's answer (no credential).
        out = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan", "--pattern", "cache:*"], capture_output=True, text=True)
        stored = out.stdout.split()
        assert len(stored) == 1 and "fleetwide" not in stored[0]
        value = subprocess.run(["redis-cli", "-p", str(redis.port), "GET", stored[0]], capture_output=True, text=True).stdout
        assert "serp-REAL" not in value
        # Redis gone: the shared level is a miss, never a failure.
        redis.kill()
        r = serp(b, token, "after-redis")
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    finally:
        if redis.proc.poll() is None:
            redis.kill()


def test_shared_cache_without_redis_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: 1\nresilience:\n  cache: {shared: true}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(SIDECAR_PROXY_LISTEN="127.0.0.1:0", SIDECAR_ADMIN_LISTEN="127.0.0.1:0", SIDECAR_STATE_DIR=str(tmp_path / "state"))
    p = subprocess.run([str(BIN), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=20, env=env)
    assert p.returncode != 0 and "resilience.cache.shared" in p.stdout + p.stderr


def test_a_429_with_retry_after_pauses_the_tool_for_every_agent(pki, https_upstream, sidecar_factory):
    state = {"n": 0}

    def limited(h, rec):
        state["n"] += 1
        if state["n"] == 1:
            return FakeUpstream.send_json(h, 429, {"error": "slow down"}, [("Retry-After", "1")])
        FakeUpstream.send_json(h, 200, {"organic_results": []})

    https_upstream.routes["/search"] = limited
    s = sidecar_factory(live_config(pki, https_upstream).replace(
        "hosts: [serpapi.com], timeout: 3s}", "hosts: [serpapi.com], timeout: 3s, cache_ttl: 0s}"), env=LIVE_ENV)
    a, b = s.new_token(), s.new_token()
    r = serp(s, a, "first")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # the upstream's answer, passed on
    r = serp(s, b, "second", headers={"X-Request-Id": "throttled-1"})
    assert r.status_code == 429 and r.json()["code"] == "tool_throttled" and r.headers["Retry-After"] == "1"
    assert state["n"] == 1, "paused calls never reach the upstream"
    assert s.access("throttled-1")["breaker"] == "throttled"
    assert metric(s, "gateway_breaker_state", tool="serpapi") == 0, "a 429 never trips the breaker"
    time.sleep(1.1)
    assert serp(s, b, "third").status_code == 200
