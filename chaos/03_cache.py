#!/usr/bin/env python3
"""Experiment 3 — cache. A repeated-query mix (Zipf-like over 60 queries) through SerpAPI with a short
TTL: the hit ratio must reach 40 %, no answer may be older than the TTL (the fake upstream stamps each
answer with the time it made it), and no STALE answer may appear while the upstream is healthy."""

import random
import threading
import time


from harness import session, PKI, Experiment, FakeUpstream, drive, live_sidecar, metric, tmpdir

TTL_S, SECONDS, QUERIES = 2, 20, 60


def main(ex):
    pki = PKI(tmpdir("pki"))
    up = FakeUpstream(pki.server_context())
    ex.cleanup.append(up.close)

    def search(h, rec):
        time.sleep(0.01)
        FakeUpstream.send_json(h, 200, {"made_at": time.time(), "organic_results": [{"title": rec.path}]})

    up.routes["/search"] = search
    s = live_sidecar(pki, up, serpapi_extra=f", cache_ttl: {TTL_S}s")
    ex.cleanup.append(s.stop)
    token = s.new_token()
    weights = [1 / (k + 1) for k in range(QUERIES)]
    local = threading.local()

    def call(i):
        if not hasattr(local, "rng"):
            local.rng = random.Random(i)
        q = local.rng.choices(range(QUERIES), weights)[0]
        r = session().get(f"{s.proxy_url}/serpapi/search.json", params={"q": f"query {q}", "num": "10"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
        age = time.time() - r.json()["made_at"]
        return r.status_code, r.headers.get("X-Cache"), age

    results = drive(call, threads=6, seconds=SECONDS, pause=0.01, max_calls=50_000)
    marks = [m for _, (_, m, _) in results]
    too_old = [age for _, (_, m, age) in results if age > TTL_S + 0.25]
    hits, misses = metric(s, "gateway_cache_hits_total", tool="serpapi"), metric(s, "gateway_cache_misses_total", tool="serpapi")
    ratio = hits / (hits + misses)
    ex.figure("agent calls", f"{len(results)} ({marks.count('HIT')} HIT, {marks.count('MISS')} MISS, {marks.count('STALE')} STALE)")
    ex.figure("upstream calls", f"{len(up.requests)}; cache bytes {metric(s, 'gateway_cache_bytes'):.0f}")
    ex.check("hit ratio ≥ 40 % (gateway_cache_hits_total / (hits + misses))", ratio >= 0.40, f"{ratio * 100:.1f} %")
    ex.check("X-Cache agrees with the metrics", marks.count("HIT") == hits and marks.count("MISS") == misses)
    ex.check("zero answers older than the TTL", not too_old,
             f"oldest answer {max(a for _, (_, _, a) in results):.2f} s, TTL {TTL_S} s (+0.25 s clock/transfer slack)")
    ex.check("zero STALE answers while the upstream is healthy", marks.count("STALE") == 0)
    ex.check("every call answered 200", all(st == 200 for _, (st, _, _) in results))
    ex.check("no API key in any cache key or answer", all("serp-REAL" not in str(r) for r in results))


if __name__ == "__main__":
    raise SystemExit(Experiment.run("cache", main))
