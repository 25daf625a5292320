#!/usr/bin/env python3
"""Experiment 2 — retries. 30 % of upstream answers are transient 503s (seeded): at least 95 % of agent
calls must succeed, and the retries must stay within the configured retry budget."""

import random
import threading


from harness import session, PKI, Experiment, FakeUpstream, drive, live_sidecar, metric, tmpdir

FAILURE_RATE, BUDGET_RATIO, BUDGET_FLOOR, SECONDS = 0.30, 0.5, 5, 20


def main(ex):
    pki = PKI(tmpdir("pki"))
    up = FakeUpstream(pki.server_context())
    ex.cleanup.append(up.close)
    rng, lock = random.Random(30), threading.Lock()
    counts = {"attempts": 0, "failed": 0}

    def search(h, rec):
        with lock:
            counts["attempts"] += 1
            fail = rng.random() < FAILURE_RATE
            counts["failed"] += fail
        if fail:
            return FakeUpstream.send_json(h, 503, {"error": "transient"})
        FakeUpstream.send_json(h, 200, {"organic_results": []})

    up.routes["/search"] = search
    extra = f"""
resilience:
  retry: {{max_attempts: 3, base_delay: 20ms, max_delay: 200ms, budget_ratio: {BUDGET_RATIO}, budget_min_per_second: {BUDGET_FLOOR}}}
"""
    s = live_sidecar(pki, up, extra=extra, serpapi_extra=", cache_ttl: 0s")
    ex.cleanup.append(s.stop)
    token = s.new_token()

    def call(i):
        r = session().get(f"{s.proxy_url}/serpapi/search.json", params={"q": f"q{i}"}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return r.status_code

    results = drive(call, threads=8, seconds=SECONDS, max_calls=50_000)
    calls = len(results)
    ok = sum(1 for _, st in results if st == 200)
    retries = metric(s, "gateway_retries_total", tool="serpapi") or 0
    exhausted = metric(s, "gateway_retry_budget_exhausted_total", tool="serpapi") or 0
    success_after_retry = metric(s, "gateway_retry_success_total", tool="serpapi") or 0
    opens = metric(s, "gateway_breaker_transitions_total", tool="serpapi", to="open") or 0
    allowed = BUDGET_RATIO * calls + BUDGET_FLOOR * (SECONDS + 1)
    ex.figure("agent calls", f"{calls} in {SECONDS} s ({calls / SECONDS:.0f}/s), upstream attempts {counts['attempts']}, "
              f"injected 503s {counts['failed']} ({counts['failed'] / max(1, counts['attempts']) * 100:.1f} %)")
    ex.figure("retries / succeeded after a retry / budget refusals", f"{retries:.0f} / {success_after_retry:.0f} / {exhausted:.0f}")
    ex.figure("without retries the success rate would be", f"{(1 - FAILURE_RATE) * 100:.0f} %")
    ex.check("≥ 95 % of agent calls succeed", ok / calls >= 0.95, f"{ok / calls * 100:.2f} % ({ok}/{calls})")
    ex.check("retries stay within the budget", retries <= allowed,
             f"{retries:.0f} retries ≤ {BUDGET_RATIO} × {calls} calls + {BUDGET_FLOOR}/s floor = {allowed:.0f} "
             f"({retries / calls * 100:.1f} % of calls)")
    ex.check("transient errors did not open the breaker", opens == 0, f"{opens:.0f} openings")


if __name__ == "__main__":
    raise SystemExit(Experiment.run("retries", main))
