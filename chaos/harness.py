"""Shared pieces of the chaos experiments: a redis-server, the real sidecar binary, fake HTTPS upstreams,
a bounded load driver, /metrics and access-log readers, and PASS/FAIL reporting.

Everything binds 127.0.0.1 on random ports and is stopped by PID. The sidecar binary is
$SIDECAR_BIN, else .build/pgo/release/sidecar (make release), else .build/debug/sidecar."""

import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "SIDECAR_BIN" not in os.environ:
    release = ROOT / ".build" / "pgo" / "release" / "sidecar"
    os.environ["SIDECAR_BIN"] = str(release if release.exists() else ROOT / ".build" / "debug" / "sidecar")
sys.path.insert(0, str(ROOT / "Tests" / "e2e"))

from conftest import BIN, LIVE_ENV, PKI, FakeUpstream, Redis, Sidecar  # noqa: E402

import requests  # noqa: E402

__all__ = ["BIN", "LIVE_ENV", "PKI", "FakeUpstream", "Sidecar", "Redis", "Experiment", "metric", "percentile", "drive", "session", "tmpdir"]


def tmpdir(prefix):
    return Path(tempfile.mkdtemp(prefix=f"chaos-{prefix}-"))


def metric(sidecar, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`, or None."""
    text = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{([^}]*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(4))
            found = True
    return total if found else None


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


_local = threading.local()


def session():
    """This thread's HTTP session (keep-alive to the sidecar, one per load thread)."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def drive(fn, threads, seconds, pause=0.0, max_calls=1_000_000):
    """Calls fn(i) from `threads` threads for `seconds` (bounded by max_calls); returns the results in
    completion order as (t_offset, result)."""
    out, lock = [], threading.Lock()
    stop_at = time.monotonic() + seconds
    start = time.monotonic()
    counter = iter(range(max_calls))

    def worker():
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            r = fn(i)
            with lock:
                out.append((time.monotonic() - start, r))
            if pause:
                time.sleep(pause)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    return out


class Experiment:
    """Collects checks; prints each with its figures and a final PASS/FAIL line; exit status follows."""

    def __init__(self, name):
        self.name = name
        self.checks = []
        self.cleanup = []
        print(f"== chaos experiment: {name}", flush=True)

    def figure(self, label, value):
        print(f"   {label}: {value}", flush=True)

    def check(self, label, ok, detail=""):
        self.checks.append((label, bool(ok)))
        print(f"   [{'ok' if ok else 'FAIL'}] {label}{(' — ' + detail) if detail else ''}", flush=True)

    @staticmethod
    def run(name, body):
        """Runs body(ex); an exception is a failed check; cleanup always runs. Returns the exit status."""
        ex = Experiment(name)
        try:
            body(ex)
        except Exception:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            ex.check("experiment completed without an error", False)
        return ex.finish()

    def finish(self):
        for c in reversed(self.cleanup):
            try:
                c()
            except Exception as e:  # noqa: BLE001
                print(f"   cleanup: {e}")
        ok = all(c[1] for c in self.checks) and bool(self.checks)
        print(f"{'PASS' if ok else 'FAIL'} {self.name} ({sum(c[1] for c in self.checks)}/{len(self.checks)} checks)", flush=True)
        return 0 if ok else 1


def live_sidecar(pki, upstream, extra="", serpapi_extra="", env=None, redis=None, keys=None):
    """A sidecar with the brokered tools live against `upstream` (trusted through the test CA)."""
    cfg = f"""
version: 1
upstream:
  ca_bundle: {pki.ca_pem}
limits:
  drain_timeout: 5s
log:
  level: info
tools:
  serpapi: {{mode: live, base_url: "{upstream.base_url}", hosts: [serpapi.com], timeout: 3s{serpapi_extra}}}
  openai: {{mode: live, base_url: "{upstream.base_url}", timeout: 5s}}
  gmail_send: {{mode: live, base_url: "{upstream.base_url}", timeout: 3s}}
  http_fetch: {{mode: mock}}
{f'auth: {{keys_dir: "{keys}"}}' if keys else ''}
{extra}
"""
    full_env = dict(LIVE_ENV, **(env or {}))
    if redis:
        full_env["REDIS_URL"] = redis.url
    return Sidecar(cfg, env=full_env)
