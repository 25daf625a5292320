"""Fleet state on a real Redis Cluster: quotas exact per agent with agents spread over three masters, a
slot migrated under load (MOVED/ASK/TRYAGAIN followed, nothing fails, nothing overshoots), revocation and
chaos broadcast through the cluster, and a master killed (its replica promoted; the sidecar recovers
without a restart, the failure policy metered meanwhile)."""

import concurrent.futures
import threading
import time

import pytest
import requests

from conftest import RedisCluster, metric
from test_fleet import ADMIN, fleet, token_for, wait_known  # noqa: F401  (fleet is a fixture)


@pytest.fixture
def cluster(tmp_path):
    c = RedisCluster(tmp_path / "cluster", masters=3)
    yield c
    c.stop()


def tag_slot(cluster, agent):
    """The slot of the agent's limit keys (`{a:<agent>}`)."""
    return cluster.keyslot("{a:" + agent + "}:c")


def call(s, token, q, session=None):
    r = (session or requests).get(f"{s.proxy_url}/serpapi/search?q={q}", headers={"X-Agent-Token": token}, timeout=15)
    return r.status_code, (r.json().get("code") if r.status_code != 200 else "ok")


def test_quotas_exact_per_agent_with_agents_on_every_master(cluster, fleet):
    sidecars = fleet(cluster.url, n=3)
    agents = [token_for(sidecars[0]) for _ in range(20)]
    owners = {cluster.owner(tag_slot(cluster, agent)) for agent, _ in agents}
    assert owners == set(cluster.masters()), "the agents' hash tags should land on every master"
    for _, token in agents:
        wait_known(sidecars, token)

    def one(i):
        agent, token = agents[i % 20]
        return agent, call(sidecars[i % 3], token, f"c{i}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(20 * 60)))
    by_agent = {}
    for agent, (status, code) in results:
        by_agent.setdefault(agent, []).append((status, code))
    for agent, outcomes in by_agent.items():
        assert outcomes.count((200, "ok")) == 50, (agent, outcomes)
        assert all(o in ((200, "ok"), (429, "quota_exceeded")) for o in outcomes), outcomes
    for s in sidecars:
        text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
        assert metric(text, "gateway_state_fallback_total", **{"class": "quota"}) == 0
        assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["redis"] == "up"


def migrate_slot(cluster, slot, target, hold=0.4):
    """What `redis-cli --cluster reshard` does for one slot, with the slot held half-migrated for `hold`
    seconds so requests meet ASK and TRYAGAIN, not only MOVED."""
    source = cluster.owner(slot)
    src, dst = cluster.node(source), cluster.node(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
    time.sleep(hold / 2)
    for _ in range(1000):
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        time.sleep(hold / 4)
    for port in cluster.live_ports():
        if port in cluster.masters():
            cluster.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target))
    return source


def test_a_slot_migrated_under_load_fails_nothing_and_overshoots_nothing(cluster, fleet, tmp_path):
    policy = fleet.policy
    policy.write_text(policy.read_text().replace("limit: 50, window: day", "limit: 300, window: day"))
    sidecars = fleet(cluster.url, n=2)
    agent, token = token_for(sidecars[0])
    wait_known(sidecars, token)
    slot = tag_slot(cluster, agent)
    target = next(p for p in cluster.masters() if p != cluster.owner(slot))
    results = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k):
        with requests.Session() as session:
            i = 0
            while not stop.is_set() and i < 200:
                outcome = call(sidecars[k % 2], token, f"m{k}-{i}", session)
                with lock:
                    results.append(outcome)
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    migrate_slot(cluster, slot, target)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert cluster.owner(slot) == target
    assert all(o in ((200, "ok"), (429, "quota_exceeded")) for o in results), {o for o in results}
    ok = results.count((200, "ok"))
    # More calls after the migration: the total admitted stays exactly the limit.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        after = list(pool.map(lambda i: call(sidecars[i % 2], token, f"after{i}"), range(max(0, 320 - ok))))
    assert ok + after.count((200, "ok")) == 300, (ok, after.count((200, "ok")))
    assert all(o in ((200, "ok"), (429, "quota_exceeded")) for o in after)


def test_revocation_and_chaos_reach_every_sidecar_through_the_cluster(cluster, fleet):
    a, b = fleet(cluster.url, n=2)
    agent, token = token_for(a, role="developer")
    wait_known([a, b], token)
    token_id = a.admin_request("GET", f"/api/agents/{agent}/tokens", token=ADMIN).json()["tokens"][0]["token_id"]
    assert a.admin_request("PUT", "/api/chaos", {"enabled": True, "fleet": True, "tools": {"serpapi": {"error_rate": 0.5}}}, token=ADMIN).status_code == 200
    deadline = time.time() + 3
    while b.admin_request("GET", "/api/chaos", token=ADMIN).json()["enabled"] is not True:
        assert time.time() < deadline, "chaos did not reach the other sidecar"
        time.sleep(0.05)
    assert a.admin_request("PUT", "/api/chaos", {"enabled": False, "fleet": True}, token=ADMIN).status_code == 200
    assert a.admin_request("POST", f"/api/tokens/{token_id}/revoke", token=ADMIN).status_code == 200
    revoked = time.time()
    while requests.get(f"{b.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=5).status_code != 401:
        assert time.time() - revoked < 1, "revocation did not reach the other sidecar"
    # The identity keys share one hash tag: one node holds the epoch and the data it vouches for.
    slots = {cluster.keyslot(k) for k in ("{sidecar}:agents", "{sidecar}:tokens", "{sidecar}:revoked", "{sidecar}:epoch")}
    assert len(slots) == 1
    assert cluster.node(cluster.owner(slots.pop())).execute_command("SISMEMBER", "{sidecar}:revoked", token_id) == 1


def test_a_plain_redis_url_to_a_cluster_node_is_followed_as_a_cluster(cluster, fleet):
    (s,) = fleet(f"redis://127.0.0.1:{cluster.ports[2]}/0", n=1)
    agents = [token_for(s) for _ in range(6)]
    assert len({cluster.owner(tag_slot(cluster, a)) for a, _ in agents}) > 1
    for _, token in agents:
        assert call(s, token, "plain") == (200, "ok")
    assert s.logs("redis is a cluster node; following the cluster")


@pytest.fixture
def replicated(tmp_path):
    c = RedisCluster(tmp_path / "replicated", masters=3, replicas=1)
    yield c
    c.stop()


def test_a_killed_master_fails_over_and_the_sidecar_recovers_without_restart(replicated, fleet):
    policy = fleet.policy
    policy.write_text(policy.read_text().replace("limit: 50, window: day", "limit: 100000, window: day"))
    (s,) = fleet(replicated.url, n=1)
    agent, token = token_for(s)
    wait_known([s], token)
    slot = tag_slot(replicated, agent)
    victim = replicated.owner(slot)
    with requests.Session() as session:
        assert call(s, token, "before", session) == (200, "ok")
        replicated.kill(victim)
        outage = []
        deadline = time.time() + 30
        while True:
            outcome = call(s, token, "during", session)
            if outcome == (200, "ok") and outage:
                break
            assert outcome in ((503, "state_unavailable"), (200, "ok")), outcome
            if outcome != (200, "ok"):
                outage.append(outcome)
            assert time.time() < deadline, "the sidecar did not recover after the failover"
            time.sleep(0.02)
        replicated.wait_ok()
        assert replicated.owner(slot) != victim
        for i in range(20):
            assert call(s, token, f"after{i}", session) == (200, "ok")
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(text, "gateway_state_fallback_total", **{"class": "quota"}) >= len(outage) > 0
    assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["redis"] == "up"


def test_a_cluster_url_to_a_plain_redis_is_used_as_one_server(tmp_path, fleet):
    from conftest import Redis
    r = Redis()
    try:
        (s,) = fleet(f"redis+cluster://127.0.0.1:{r.port}", n=1)
        agent, token = token_for(s)
        assert call(s, token, "plain") == (200, "ok")
        assert s.logs("redis is configured as a cluster but the server is not one; using it as one server")
    finally:
        r.kill()


def test_a_tls_cluster_shares_quotas_across_sidecars(tmp_path, pki, fleet):
    """`rediss+cluster://`: every connection — the seeds and each node the slot table names — runs TLS,
    the node certificates checked against the addresses the cluster gives; quotas stay exact across two
    sidecars with agents on every master, and a sidecar that does not trust the cluster's CA says so at
    start."""
    c = RedisCluster(tmp_path / "tls-cluster", masters=3, tls=pki)
    try:
        trusted = f"redis: {{ca_bundle: \"{pki.ca_pem}\"}}\n"
        sidecars = fleet(c.url, n=2, extra_config=trusted)
        agents = [token_for(sidecars[0]) for _ in range(12)]
        assert {c.owner(tag_slot(c, agent)) for agent, _ in agents} == set(c.masters())
        for _, token in agents:
            wait_known(sidecars, token)
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda i: (agents[i % 12][0], call(sidecars[i % 2], agents[i % 12][1], f"t{i}")), range(12 * 55)))
        for agent in {a for a, _ in agents}:
            outcomes = [r for a, r in results if a == agent]
            assert outcomes.count((200, "ok")) == 50 and outcomes.count((429, "quota_exceeded")) == 5, (agent, outcomes)
        for s in sidecars:
            assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["redis"] == "up"
        untrusting = fleet(c.url, n=1)[0]
        line = untrusting.wait_for_log(lambda r: "redis" in r.get("msg", "") and "CERTIFICATE_VERIFY_FAILED" in str(r.get("error", "")), timeout=10)
        assert line["level"] in ("warning", "error")
    finally:
        c.stop()
