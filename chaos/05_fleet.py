#!/usr/bin/env python3
"""Experiment 5 — fleet. Two sidecars share a redis-server: chaos switched on through one sidecar's admin
API (`"fleet": true`) applies to both, and so does switching it off through the other; an open breaker
tripped on one is obeyed by the other without touching the upstream."""

import subprocess
import time

import requests

from harness import BIN, PKI, Experiment, FakeUpstream, Redis, live_sidecar, metric, tmpdir

ADMIN = "adm_chaos_fleet_token_0123456789"


def wait_until(pred, timeout=3.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def main(ex):
    pki = PKI(tmpdir("pki"))
    up = FakeUpstream(pki.server_context())
    ex.cleanup.append(up.close)
    redis = Redis()
    ex.cleanup.append(redis.kill)
    keys = tmpdir("keys") / "k"
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    env = {"SIDECAR_ADMIN_TOKEN": ADMIN}
    extra = "resilience:\n  breaker: {consecutive_failures: 3, open: 5s, max_open: 5s}\n"
    a = live_sidecar(pki, up, extra=extra, serpapi_extra=", cache_ttl: 0s, retry_attempts: 1", env=dict(env, SIDECAR_ID="sc-a"), redis=redis, keys=keys)
    ex.cleanup.append(a.stop)
    b = live_sidecar(pki, up, extra=extra, serpapi_extra=", cache_ttl: 0s, retry_attempts: 1", env=dict(env, SIDECAR_ID="sc-b"), redis=redis, keys=keys)
    ex.cleanup.append(b.stop)
    # Agents live in Redis: an agent made through A has tokens that work on B.
    agent = a.admin_request("POST", "/api/agents", {"name": "fleet", "role": "developer", "created_by": "chaos"}, token=ADMIN).json()["agent_id"]
    token = b.admin_request("POST", f"/api/agents/{agent}/tokens", {"ttl": "10m"}, token=ADMIN).json()["token"]

    def serp(s, q):
        return requests.get(f"{s.proxy_url}/serpapi/search.json", params={"q": q}, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def chaos_enabled(s):
        return s.admin_request("GET", "/api/chaos", token=ADMIN).json()["enabled"]

    ex.check("both sidecars serve the same agent", serp(a, "x").status_code == 200 and serp(b, "x").status_code == 200)
    r = a.admin_request("PUT", "/api/chaos", {"enabled": True, "fleet": True, "seed": 5, "tools": {"serpapi": {"error_rate": 1, "error_statuses": [503]}}},
                        token=ADMIN)
    took = wait_until(lambda: chaos_enabled(b))
    ex.check("chaos switched on through A applies to B", took is not None, f"B enabled {((took or 0) * 1000):.0f} ms after A's PUT ({r.status_code})")
    rb = serp(b, "y")
    ex.check("B injects faults", rb.status_code == 503 and rb.headers.get("X-Chaos-Injected") == "error")
    b.admin_request("PUT", "/api/chaos", {"enabled": False, "fleet": True}, token=ADMIN)
    took = wait_until(lambda: not chaos_enabled(a))
    ex.check("chaos switched off through B applies to A", took is not None, f"A disabled {((took or 0) * 1000):.0f} ms after B's PUT")
    ex.check("A answers normally again", serp(a, "z").status_code == 200)

    # Shared breaker: the upstream fails; A trips; B obeys without calling the upstream.
    up.routes["/search"] = lambda h, rec: FakeUpstream.send_json(h, 503, {"error": "down"})
    for i in range(3):
        serp(a, f"f{i}")
    ex.check("A's breaker is open", serp(a, "f-open").json().get("code") == "breaker_open")
    before = len(up.requests)
    took = wait_until(lambda: metric(b, "gateway_breaker_state", tool="serpapi") == 2, timeout=2)
    rb = serp(b, "f-b")
    ex.check("B learned the open breaker from the fleet", took is not None and rb.json().get("code") == "breaker_open",
             f"B open {((took or 0) * 1000):.0f} ms after A tripped")
    ex.check("B did not touch the failing upstream", len(up.requests) == before)


if __name__ == "__main__":
    raise SystemExit(Experiment.run("fleet", main))
