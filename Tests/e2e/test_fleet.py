"""Policy and fleet-wide limits with a real redis-server: exact quotas across three sidecars, a shared
rate limit, revocation propagation, Redis failure and recovery, policy reloads under load."""

import concurrent.futures
import os
import signal
import subprocess
import threading
import time

import pytest
import redis as redis_py
import requests

from conftest import BIN, Redis, Sidecar

ADMIN = "adm_fleet_admin_token_0123456789"

POLICY = """
version: 1
roles:
  developer: {allow: ["*"]}
  limited:
    allow: ["serpapi:search", "http_fetch:*", "openai:chat"]
    rules:
      - scope: serpapi:search
        quota: {limit: 50, window: day, timezone: America/New_York}
      - scope: "http_fetch:get"
        rate: {limit: 20, per: 1s, burst: 1}
      - scope: openai:chat
        guards: {models: [gpt-4o-mini], max_tokens: 200}
        budget: {tokens: 400, window: day, timezone: UTC}
"""


@pytest.fixture
def fleet(tmp_path, sidecar_factory):
    """Starts sidecars sharing one Redis, one key set and one admin token."""
    keys = tmp_path / "keys"
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    def start(redis_url, n=1, extra_env=None, sidecar_ids=None, extra_config=""):
        out = []
        for i in range(n):
            cfg = f"version: 1\nauth: {{keys_dir: \"{keys}\"}}\npolicy: {{file: \"{policy}\"}}\nlimits: {{drain_timeout: 2s}}\n" + extra_config
            env = {"SIDECAR_ADMIN_TOKEN": ADMIN, "SIDECAR_STATE_DIR": str(tmp_path / f"state{i}-{len(out)}-{time.time_ns()}"),
                   "SIDECAR_ID": (sidecar_ids or [f"sc-{i}"] * n)[i]}
            if redis_url:
                env["REDIS_URL"] = redis_url
            env.update(extra_env or {})
            out.append(sidecar_factory(cfg, env=env))
        return out

    start.policy = policy
    return start


def token_for(s: Sidecar, role="limited"):
    agent = s.admin_request("POST", "/api/agents", {"name": "fleet", "role": role, "created_by": "e2e"}, token=ADMIN).json()["agent_id"]
    r = s.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "30m"}, token=ADMIN)
    assert r.status_code == 201, r.text
    return agent, r.json()["token"]


def wait_known(sidecars, token, path="/serpapi/search?q=warm"):
    """A fresh agent reaches every sidecar through Redis pub/sub; wait until all accept the token."""
    deadline = time.time() + 5
    for s in sidecars:
        while True:
            r = requests.get(f"{s.proxy_url}/fetch?url=https%3A%2F%2Fexample.com%2F", headers={"X-Agent-Token": token}, timeout=5)
            if r.status_code != 401:
                break
            assert time.time() < deadline, r.text
            time.sleep(0.02)


def test_quota_of_50_is_exactly_50_across_three_sidecars(redis, fleet):
    sidecars = fleet(redis.url, n=3)
    _, token = token_for(sidecars[0])
    wait_known(sidecars, token)

    def call(i):
        s = sidecars[i % 3]
        r = requests.get(f"{s.proxy_url}/serpapi/search?q=quota-{i}", headers={"X-Agent-Token": token}, timeout=15)
        return r.status_code, (r.json().get("code") if r.status_code != 200 else "ok"), r.headers

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(call, range(300)))
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 50, statuses.count(200)
    assert statuses.count(429) == 250
    assert {r[1] for r in results if r[0] == 429} == {"quota_exceeded"}
    refused = next(r[2] for r in results if r[0] == 429)
    assert int(refused["Retry-After"]) > 0 and refused["X-RateLimit-Limit"] == "50" and refused["X-RateLimit-Remaining"] == "0"
    assert refused["RateLimit-Policy"].startswith('"quota";q=50;w=')
    served = {s.proxy: sum(1 for l in s.logs("access") if l.get("outcome") == "ok" and l.get("tool") == "serpapi") for s in sidecars}
    assert sum(served.values()) == 50 and all(v > 0 for v in served.values()), served


def test_a_tls_redis_is_shared_and_an_untrusted_one_is_named_at_start(pki, fleet):
    """`rediss://` with the operator's CA (`redis.ca_bundle`): the password and every count travel
    encrypted, and the quota is still exact across two sidecars. The same server without the bundle (its
    certificate chains to no system root) is named at start, with why."""
    tls_redis = Redis(tls=pki, password="s3cret-redis-pw")
    try:
        assert tls_redis.url.startswith("rediss://")
        sidecars = fleet(tls_redis.url, n=2, extra_config=f'redis: {{ca_bundle: "{pki.ca_pem}"}}\n')
        for s in sidecars:
            assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["redis"] == "up"
            assert not s.logs("redis is not usable at start; its limit classes follow state.on_redis_failure until it is")
        _, token = token_for(sidecars[0])
        wait_known(sidecars, token)
        statuses = [requests.get(f"{sidecars[i % 2].proxy_url}/serpapi/search?q=tls-{i}", headers={"X-Agent-Token": token}, timeout=15).status_code
                    for i in range(56)]
        assert statuses.count(200) == 50 and statuses.count(429) == 6, statuses
        untrusted = fleet(tls_redis.url, n=1)[0]
        line = untrusted.wait_for_log(lambda l: l.get("msg", "").startswith("redis is not usable at start"))
        assert "TLS: CERTIFICATE_VERIFY_FAILED" in line["error"], line
        assert "rediss://***@localhost" in line["redis"]
        assert all("s3cret-redis-pw" not in l for s in sidecars + [untrusted] for l in s.lines)
    finally:
        tls_redis.kill()


def test_a_ca_bundle_without_a_tls_redis_url_is_a_config_error(tmp_path, pki):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'version: 1\nredis: {{url: "redis://127.0.0.1:6379", ca_bundle: "{pki.ca_pem}"}}\n')
    p = subprocess.run([str(BIN), "check-config", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 1 and "redis.ca_bundle: needs a TLS Redis URL" in p.stderr, p.stderr


def test_rate_limit_of_20_per_second_holds_across_two_sidecars(redis, fleet):
    sidecars = fleet(redis.url, n=2)
    _, token = token_for(sidecars[0])
    wait_known(sidecars, token)
    time.sleep(1.1)  # let the warm-up calls age out of the rate window
    stop = time.time() + 10
    ok = []
    lock = threading.Lock()

    def worker(k):
        with requests.Session() as session:
            s = sidecars[k % 2]
            while time.time() < stop:
                r = session.get(f"{s.proxy_url}/fetch?url=https%3A%2F%2Fexample.com%2F{k}", headers={"X-Agent-Token": token}, timeout=5)
                if r.status_code == 200:
                    with lock:
                        ok.append(time.time())
                else:
                    assert r.status_code == 429 and r.json()["code"] == "rate_limited"

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 180 <= len(ok) <= 221, len(ok)  # 20/s for 10 s (+1 burst), within ±10 %


def test_revocation_on_one_sidecar_refuses_on_the_other_within_100ms(redis, fleet):
    a, b = fleet(redis.url, n=2)
    agent, token = token_for(a, role="developer")
    wait_known([a, b], token)
    token_id = a.admin_request("GET", f"/api/agents/{agent}/tokens", token=ADMIN).json()["tokens"][0]["token_id"]
    with requests.Session() as session:
        assert session.get(f"{b.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=5).status_code == 200
        assert a.admin_request("POST", f"/api/tokens/{token_id}/revoke", token=ADMIN).status_code == 200
        revoked_at = time.time()
        while True:
            r = session.get(f"{b.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=5)
            if r.status_code == 401:
                break
            assert time.time() - revoked_at < 1
        elapsed = time.time() - revoked_at
    assert r.json()["code"] == "token_revoked"
    assert elapsed < 0.1, f"{elapsed * 1000:.1f} ms"


def test_redis_down_fails_quotas_closed_rates_open_and_recovers(redis, fleet):
    (s,) = fleet(redis.url, n=1)
    _, token = token_for(s)
    headers = {"X-Agent-Token": token}
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=1", headers=headers, timeout=5).status_code == 200
    redis.kill()
    time.sleep(0.2)
    statuses = []
    for i in range(20):
        statuses.append(requests.get(f"{s.proxy_url}/serpapi/search?q={i}", headers=headers, timeout=5))
        statuses.append(requests.get(f"{s.proxy_url}/fetch?url=https%3A%2F%2Fexample.com%2F", headers=headers, timeout=5))
    quota = [r for r in statuses[::2]]
    rate = [r for r in statuses[1::2]]
    assert all(r.status_code == 503 and r.json()["code"] == "state_unavailable" for r in quota)
    assert {r.status_code for r in rate} <= {200, 429} and any(r.status_code == 200 for r in rate), [r.status_code for r in rate]
    assert all(r.status_code != 500 for r in statuses)
    ready = requests.get(f"{s.admin_url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["redis"].startswith("down")
    metrics = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert 'gateway_state_fallback_total{class="quota"}' in metrics and "gateway_redis_errors_total" in metrics
    # While Redis is down the control API answers 503 problems, not 500s.
    r = s.admin_request("POST", "/api/agents", {"name": "x", "role": "limited", "created_by": "e2e"}, token=ADMIN)
    assert r.status_code == 503 and r.json()["code"] == "state_unavailable"
    redis.start()  # same port; the identity store is empty again, so register afresh
    deadline = time.time() + 10
    while True:
        r = s.admin_request("POST", "/api/agents", {"name": "fleet", "role": "limited", "created_by": "e2e"}, token=ADMIN)
        if r.status_code == 201:
            # Each event loop's Redis connection reconnects on its own backoff: any step may still see a 503.
            agent = r.json()["agent_id"]
            r = s.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "5m"}, token=ADMIN)
            if r.status_code == 201:
                r = requests.get(f"{s.proxy_url}/serpapi/search?q=back", headers={"X-Agent-Token": r.json()["token"]}, timeout=5)
                if r.status_code == 200:
                    break
        assert r.status_code in (201, 401, 503), r.text
        assert time.time() < deadline, r.text
        time.sleep(0.2)
    assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["redis"] == "up"


def test_policy_reload_under_load_fails_no_request(fleet):
    (s,) = fleet(None, n=1)
    _, token = token_for(s, role="developer")
    stop = threading.Event()
    results = []

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                results.append(session.get(f"{s.proxy_url}/serpapi/search?q=reload", headers={"X-Agent-Token": token}, timeout=5).status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        original = s.admin_request("GET", "/api/policy", token=ADMIN).json()["hash"]
        for i in range(10):
            text = POLICY + f"\n# revision {i}\n"
            r = requests.put(f"{s.admin_url}/api/policy", data=text, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
            assert r.status_code == 200, r.text
            assert s.admin_request("POST", "/api/policy/reload", token=ADMIN).status_code == 200
            time.sleep(0.05)
        active = s.admin_request("GET", "/api/policy", token=ADMIN).json()["hash"]
        assert active != original
        bad = requests.put(f"{s.admin_url}/api/policy", data="version: 1\nroles:\n  x: {allow: [\"ftp:get\"]}\n",
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "roles.x.allow[0]"
        assert s.admin_request("GET", "/api/policy", token=ADMIN).json()["hash"] == active
        # A "billion laughs" (nine nested aliases of nine) held the admin request at full CPU: refused at once.
        laughs = 'version: 1\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
            f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for n, p in zip("bcdefghi", "abcdefgh"))
        started = time.monotonic()
        bomb = requests.put(f"{s.admin_url}/api/policy", data=laughs, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert bomb.status_code == 422 and "anchors" in bomb.text and time.monotonic() - started < 2
        assert s.admin_request("GET", "/api/policy", token=ADMIN).json()["hash"] == active
        # A bad file on disk is refused too, and counted. Written whole (a rename), as a deploy tool does:
        # write_text truncates first, and a poll between the truncate and the write would count the empty
        # file as a second refusal.
        staged = fleet.policy.with_suffix(".staged")
        staged.write_text("version: 1\nroles: {}\n")
        os.replace(staged, fleet.policy)
        # The file is polled every second: wait for the poll to refuse it (a fixed 1.5 s sleep was a guess
        # a loaded machine could lose), then the active policy must be unchanged.
        deadline = time.time() + 15
        while "gateway_policy_reload_failures_total 3" not in requests.get(f"{s.admin_url}/metrics", timeout=5).text:
            assert time.time() < deadline, "the bad file was not refused"
            time.sleep(0.1)
        assert s.admin_request("GET", "/api/policy", token=ADMIN).json()["hash"] == active
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(results) > 100 and set(results) == {200}, (len(results), set(results))
    metrics = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert "gateway_policy_reload_failures_total 3" in metrics  # two refused PUTs and the bad file


def test_embedded_quota_counts_survive_a_restart(tmp_path, sidecar_factory):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nroles:\n  r:\n    allow: [\"serpapi:search\"]\n    rules:\n"
                      "      - {scope: \"serpapi:search\", quota: {limit: 3, window: day}}\n")
    env = {"SIDECAR_STATE_DIR": str(tmp_path / "state"), "SIDECAR_ADMIN_TOKEN": ADMIN}
    cfg = f"version: 1\npolicy: {{file: \"{policy}\"}}\n"
    s = sidecar_factory(cfg, env=env)
    agent, token = token_for(s, role="r")
    for _ in range(2):
        assert requests.get(f"{s.proxy_url}/serpapi/search?q=a", headers={"X-Agent-Token": token}, timeout=5).status_code == 200
    assert s.stop() == 0
    s2 = sidecar_factory(cfg, env=env)
    codes = [requests.get(f"{s2.proxy_url}/serpapi/search?q=b", headers={"X-Agent-Token": token}, timeout=5).status_code for _ in range(3)]
    assert codes == [200, 429, 429]


def test_guards_and_budgets_over_http(fleet):
    (s,) = fleet(None, n=1)
    _, token = token_for(s)
    h = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers=h, timeout=5,
                      json={"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403 and r.json()["code"] == "param_denied" and r.json()["parameter"] == "model"
    assert "gpt-4o-mini" not in r.text, "the refusal never reveals the allowed values"
    # Budget 400 tokens/day; each call reserves max_tokens (150) + its input (~27), then settles to the
    # real usage (~40 tokens in mock mode, streamed or not). Without settlement only two calls would fit.
    passed = 0
    for i in range(10):
        body = {"model": "gpt-4o-mini", "max_tokens": 150, "messages": [{"role": "user", "content": f"hello {i}"}], "stream": i % 2 == 1}
        r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers=h, json=body, timeout=5)
        if r.status_code == 200:
            passed += 1
        else:
            assert r.status_code == 429 and r.json()["code"] == "budget_exhausted"
    assert 5 <= passed <= 8, passed
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers=h, timeout=5,
                      json={"model": "gpt-4o-mini", "max_tokens": 1000, "messages": []})
    assert r.status_code == 403 and r.json()["parameter"] == "max_tokens"


def test_identity_keys_of_an_earlier_version_are_moved_under_the_hash_tag(redis, fleet):
    """An earlier version wrote `sidecar:agents` and friends without a hash tag: a sidecar of this version
    renames them (never overwriting) and finds the agents and revocations as they were."""
    (a,) = fleet(redis.url, n=1)
    agent, token = token_for(a, role="developer")
    token_id = a.admin_request("GET", f"/api/agents/{agent}/tokens", token=ADMIN).json()["tokens"][0]["token_id"]
    assert a.admin_request("POST", f"/api/tokens/{token_id}/revoke", token=ADMIN).status_code == 200
    a.stop()
    r = redis_py.Redis(port=redis.port)
    for new, old in [("{sidecar}:agents", "sidecar:agents"), ("{sidecar}:tokens", "sidecar:tokens"),
                     ("{sidecar}:revoked", "sidecar:revoked"), ("{sidecar}:epoch", "sidecar:epoch"),
                     (f"{{sidecar}}:agent-tokens:{agent}", f"sidecar:agent-tokens:{agent}")]:
        r.rename(new, old)
    (b,) = fleet(redis.url, n=1)
    assert b.logs("identity keys moved under the {sidecar} hash tag")
    assert not r.exists("sidecar:agents", "sidecar:revoked", "sidecar:epoch")
    assert any(x["agent_id"] == agent for x in b.admin_request("GET", "/api/agents", token=ADMIN).json()["agents"])
    assert b.admin_request("GET", f"/api/agents/{agent}/tokens", token=ADMIN).json()["tokens"][0]["token_id"] == token_id
    refused = requests.get(f"{b.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=5)
    assert refused.status_code == 401 and refused.json()["code"] == "token_revoked"
    assert not b.logs("identity store lost its data")


LEASE_POLICY = """
version: 1
roles:
  streamer:
    allow: ["openai:chat", "serpapi:search"]
    concurrency: 1
"""


def stream_chat(s, token, stop_after=None):
    """A streamed mock completion (paced by mock.stream_delay); returns (seconds, chunks) or, with
    `stop_after`, leaves the response open after that many chunks and returns it."""
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers={"X-Agent-Token": token}, stream=True, timeout=30,
                      json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "one two three four five six seven"}]})
    assert r.status_code == 200, r.text
    started = time.time()
    chunks = 0
    for line in r.iter_lines():
        if line.startswith(b"data:"):
            chunks += 1
            if stop_after and chunks >= stop_after:
                return r
    return time.time() - started, chunks


def test_an_agent_calling_again_as_soon_as_it_has_the_answer_finds_its_slot_free_on_any_sidecar(redis, tmp_path, sidecar_factory):
    """Concurrency 1 across a fleet, an agent calling one sidecar after the other the moment each answer
    arrives (whole answers and streams): the slot is given back before the answer's last byte goes out,
    so no call meets `concurrency_limited`."""
    keys = tmp_path / "keys"
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(LEASE_POLICY)
    cfg = f"version: 1\nauth: {{keys_dir: \"{keys}\"}}\npolicy: {{file: \"{policy}\"}}\nmock: {{stream_delay: 0ms}}\n"
    a, b = [sidecar_factory(cfg, env={"SIDECAR_ADMIN_TOKEN": ADMIN, "REDIS_URL": redis.url, "SIDECAR_ID": f"sc-{i}",
                                      "SIDECAR_STATE_DIR": str(tmp_path / f"state{i}")}) for i in range(2)]
    _, token = token_for(a, role="streamer")
    wait_known([a, b], token)
    sessions = [requests.Session(), requests.Session()]
    refused = []
    for i in range(300):
        s, session = ((a, sessions[0]), (b, sessions[1]))[i % 2]
        if i % 3 == 0:
            r = session.post(f"{s.proxy_url}/openai/v1/chat/completions", headers={"X-Agent-Token": token}, timeout=10,
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        else:
            r = session.get(f"{s.proxy_url}/serpapi/search?q=n{i}", headers={"X-Agent-Token": token}, timeout=10)
        if r.status_code != 200:
            refused.append((i, r.status_code, r.text[:80]))
    assert refused == []


def test_concurrency_leases_renew_for_long_calls_and_free_within_the_ttl_when_a_holder_dies(redis, tmp_path, sidecar_factory):
    keys = tmp_path / "keys"
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(LEASE_POLICY)
    cfg = (f"version: 1\nauth: {{keys_dir: \"{keys}\"}}\npolicy: {{file: \"{policy}\"}}\nmock: {{stream_delay: 700ms}}\n"
           "state: {concurrency_lease: 3s}\n")
    a, b = [sidecar_factory(cfg, env={"SIDECAR_ADMIN_TOKEN": ADMIN, "REDIS_URL": redis.url, "SIDECAR_ID": f"sc-{i}",
                                      "SIDECAR_STATE_DIR": str(tmp_path / f"state{i}")}) for i in range(2)]
    _, token = token_for(a, role="streamer")
    wait_known([a, b], token)
    headers = {"X-Agent-Token": token}

    # A stream that outlives the lease twice over keeps its slot: the other sidecar is refused throughout.
    result = {}
    t = threading.Thread(target=lambda: result.update(done=stream_chat(a, token)))
    t.start()
    time.sleep(0.5)
    refusals = 0
    while t.is_alive():
        r = requests.get(f"{b.proxy_url}/serpapi/search?q=x", headers=headers, timeout=5)
        if not t.is_alive():
            break
        assert r.status_code == 429 and r.json()["code"] == "concurrency_limited", (r.status_code, r.text)
        refusals += 1
        time.sleep(0.3)
    t.join()
    seconds, chunks = result["done"]
    assert seconds > 6 and refusals > 10, (seconds, refusals)
    assert requests.get(f"{b.proxy_url}/serpapi/search?q=after", headers=headers, timeout=5).status_code == 200

    # The holder dies mid-stream: its slot frees within the lease TTL (3 s), not before its last renewal.
    held = stream_chat(a, token, stop_after=2)
    a.signal(signal.SIGKILL)
    killed = time.time()
    while True:
        r = requests.get(f"{b.proxy_url}/serpapi/search?q=dead", headers=headers, timeout=5)
        if r.status_code == 200:
            break
        assert r.status_code == 429 and r.json()["code"] == "concurrency_limited"
        assert time.time() - killed < 3.5, "the dead holder's slot did not free within the lease TTL"
        time.sleep(0.1)
    held.close()


def test_a_stored_response_handed_out_by_one_sidecar_is_its_agents_on_every_sidecar(redis, fleet):
    """The owners of stored OpenAI responses are in Redis: the agent polls its background response through
    another sidecar of the fleet; another agent is refused on both."""
    import openai
    s1, s2 = fleet(redis.url, n=2)
    agent_a, ta = token_for(s1, role="developer")
    _, tb = token_for(s1, role="developer")
    wait_known([s1, s2], ta)
    wait_known([s1, s2], tb)
    made = openai.OpenAI(base_url=f"{s1.proxy_url}/openai/v1", api_key=ta, max_retries=0).responses.create(
        model="gpt-4o-mini", input="fleet", background=True)
    a2 = openai.OpenAI(base_url=f"{s2.proxy_url}/openai/v1", api_key=ta, max_retries=0)
    # The record is written to Redis beside the answer: on another sidecar it is there within moments.
    deadline = time.time() + 2
    while True:
        try:
            assert a2.responses.retrieve(made.id).status == "completed"
            break
        except openai.NotFoundError:
            assert time.time() < deadline
            time.sleep(0.02)
    assert redis_py.Redis.from_url(redis.url).pttl(f"sidecar:openai:response:{made.id}:{agent_a}") > 29 * 86_400_000
    for s in (s1, s2):
        b = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=tb, max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            b.responses.retrieve(made.id)
        assert e.value.body["code"] == "response_not_found"
    # Redis down: what a sidecar remembers still answers; what it would have to read is 503, not a guess.
    redis.kill()
    try:
        time.sleep(0.2)
        assert a2.responses.retrieve(made.id).status == "completed"
        b = openai.OpenAI(base_url=f"{s2.proxy_url}/openai/v1", api_key=tb, max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            b.responses.retrieve(made.id)
        assert e.value.status_code == 503 and e.value.body["code"] == "state_unavailable"
        # A response created meanwhile is still its agent's on the sidecar that handed it out.
        a1 = openai.OpenAI(base_url=f"{s1.proxy_url}/openai/v1", api_key=ta, max_retries=0)
        later = a1.responses.create(model="gpt-4o-mini", input="while redis is down", background=True)
        assert a1.responses.retrieve(later.id).status == "completed"
        s1.wait_for_log(lambda r: r.get("msg", "").startswith("stored responses: owners could not be recorded"))
    finally:
        redis.start()
