#!/usr/bin/env python3
"""Experiment 1 — circuit breaker. The upstream answers 503 for FAIL_SECONDS (30 s) under steady load:
the breaker must open within its window, fast-fail with p99 < 1 ms (measured inside the sidecar, from the
access log), keep the failing upstream nearly untouched while open, and close within one open period plus
a probe once the upstream recovers."""

import os
import random
import time

import requests

from harness import PKI, Experiment, FakeUpstream, live_sidecar, metric, percentile, tmpdir

FAIL_SECONDS = float(os.environ.get("FAIL_SECONDS", "30"))
WINDOW_S, OPEN_S, MAX_OPEN_S = 10, 2, 8


def main(ex):
    pki = PKI(tmpdir("pki"))
    up = FakeUpstream(pki.server_context())
    ex.cleanup.append(up.close)
    state = {"failing": False, "calls_failing": 0}

    def search(h, rec):
        if state["failing"]:
            state["calls_failing"] += 1
            return FakeUpstream.send_json(h, 503, {"error": "upstream down"})
        FakeUpstream.send_json(h, 200, {"search_metadata": {"status": "Success"}, "organic_results": []})

    up.routes["/search"] = search
    extra = f"""
resilience:
  breaker: {{window: {WINDOW_S}s, minimum_volume: 20, failure_rate: 0.5, consecutive_failures: 5, open: {OPEN_S}s, max_open: {MAX_OPEN_S}s}}
"""
    s = live_sidecar(pki, up, extra=extra, serpapi_extra=", cache_ttl: 0s")
    ex.cleanup.append(s.stop)
    token = s.new_token()
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    results = []  # (t, status, code, client_ms)
    t0 = time.monotonic()
    phase = {"fail_start": None, "recover": None}
    end = FAIL_SECONDS + 20
    deadline = t0 + end + 5
    n = 0
    while time.monotonic() < deadline and n < 200_000:
        t = time.monotonic() - t0
        if phase["fail_start"] is None and t >= 5:
            state["failing"] = True
            phase["fail_start"] = t
        if phase["recover"] is None and phase["fail_start"] is not None and t >= 5 + FAIL_SECONDS:
            state["failing"] = False
            phase["recover"] = t
        if t >= end:
            break
        start = time.perf_counter()
        r = session.get(f"{s.proxy_url}/serpapi/search.json", params={"q": f"q{random.randrange(1 << 30)}"}, headers=headers, timeout=10)
        ms = (time.perf_counter() - start) * 1000
        code = r.json().get("code") if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/problem+json") else None
        results.append((t, r.status_code, code, ms))
        n += 1
        time.sleep(0.004)

    fs, rv = phase["fail_start"], phase["recover"]
    first_open = next((t for t, _, c, _ in results if c == "breaker_open" and t >= fs), None)
    during = [x for x in results if fs <= x[0] < rv]
    fastfails = [x for x in during if x[2] == "breaker_open"]
    first_ok_after = next((t for t, st, _, _ in results if t >= rv and st == 200), None)
    access = [r for r in s.logs("access") if r.get("outcome") == "breaker_open"]
    server_ms = [float(r["duration_ms"]) for r in access]

    ex.figure("agent calls", f"{len(results)} total, {len(during)} during the {FAIL_SECONDS:.0f} s outage, {len(fastfails)} fast-failed")
    ex.figure("upstream calls during the outage", f"{state['calls_failing']} (attempts incl. retries and probes)")
    ex.check("breaker opened within the window", first_open is not None and first_open - fs <= WINDOW_S,
             f"opened {((first_open or 0) - fs) * 1000:.0f} ms after the outage began (window {WINDOW_S} s)")
    ex.check("fast-fail p99 < 1 ms inside the sidecar", server_ms and percentile(server_ms, 99) < 1.0,
             f"p50 {percentile(server_ms, 50) * 1000:.0f} µs, p99 {percentile(server_ms, 99) * 1000:.0f} µs, max {max(server_ms or [0]) * 1000:.0f} µs over {len(server_ms)}")
    ex.figure("fast-fail as the agent sees it (Python client, incl. HTTP)",
              f"p50 {percentile([x[3] for x in fastfails], 50):.2f} ms, p99 {percentile([x[3] for x in fastfails], 99):.2f} ms")
    ex.check("the failing upstream is spared while open", state["calls_failing"] < 0.2 * len(during),
             f"{state['calls_failing']} upstream attempts for {len(during)} agent calls")
    budget = MAX_OPEN_S * 1.2 + 1.0
    ex.check("closed within one open period plus a probe after recovery", first_ok_after is not None and first_ok_after - rv <= budget,
             f"first 200 {((first_ok_after or 99) - rv) * 1000:.0f} ms after recovery (bound {budget:.1f} s = max open × jitter + probe)")
    ex.check("breaker gauge back to closed", metric(s, "gateway_breaker_state", tool="serpapi") == 0)
    opens = metric(s, "gateway_breaker_transitions_total", tool="serpapi", to="open")
    ex.figure("transitions to open / fast-fails (metrics)", f"{opens:.0f} / {metric(s, 'gateway_breaker_fastfail_total', tool='serpapi'):.0f}")
    ex.check("each transition logged once", len(s.logs("circuit breaker open")) == opens, f"{len(s.logs('circuit breaker open'))} log lines")


if __name__ == "__main__":
    raise SystemExit(Experiment.run("breaker", main))
