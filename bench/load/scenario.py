#!/usr/bin/env python3
"""Load scenarios against the real binary, open-model: requests start on schedule whether or not earlier
ones finished (like k6's ramping-arrival-rate or wrk2), and each latency is measured from the time the
request was *due*, so a stalled sidecar is charged for every request it delayed (coordinated omission
corrected). Latencies go into HdrHistograms (the `hdrhistogram` package).

    python3 bench/load/scenario.py waves --scale 0.05 [--redis] [--binary PATH] [--out DIR]

Scenarios (rates in req/s; durations multiplied by --scale, so CI runs a 1-2 minute version):
  waves   ramp to 60 over 10 min, hold 10, spike to 120 for 2, 60 for 3, wave to 80 for 10, down over 5;
          60 % scraper / 30 % enricher / 10 % engager, plus 3 % denial probes
  chaos   20 for 6 min; chaos switched on (1/6 → 3/6) and off through the admin API
  stress  10 agents x 2 req/s for 1 h over the four tools, 30 live SSE run streams, 30 % client_token
          reuse, 10 % of runs cancelled mid-way
  soak    10 for 24 h with real changes at fixed offsets: a new sealed credential version and SIGHUP, a
          policy update halving a quota, a 30-minute chaos window; metric snapshots throughout
  peak    steps of 10 s from 200 req/s up (x1.25) until p99 added latency passes 1 ms or the generator
          cannot keep the schedule; reports the last step that held

Outcomes by class: success (2xx), denial (the policy said no: expected, never counted as success),
throttle (429), upstream_error (the upstream failed or the breaker answered for it), sidecar_error
(anything else: a 5xx of the sidecar's own, a reset, a client timeout). One folder per run holds
results.json, the /metrics snapshots (before, periodic, after), metrics-delta.json, timeline.json
(mid-run changes) and samples.json (CPU and RSS of the sidecar each second). `bench/report DIR` renders it.
"""
import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "scenario-admin-token-0123456789abcdef"
KEYS = {"SERPAPI_API_KEY": "serp-scenario-0123456789abcdef", "OPENAI_API_KEY": "sk-scenario-0123456789abcdef0123",
        "GMAIL_ACCESS_TOKEN": "ya29.scenario-0123456789abcdef"}
DENIAL_CODES = {"scope_denied", "param_denied", "off_hours", "egress_denied", "secret_exfiltration", "approval_pending",
                "approval_denied", "approval_expired", "run_forbidden", "run_cancelled", "run_finished", "run_not_started",
                "duplicate_in_flight", "duplicate_outcome_unknown", "idempotency_conflict"}
UPSTREAM_CODES = {"upstream_unreachable", "upstream_timeout", "upstream_protocol_error", "upstream_response_too_large",
                  "breaker_open", "tool_throttled"}
CLASSES = ["success", "denial", "throttle", "upstream_error", "sidecar_error"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def classify(status, code, chaos):
    if 200 <= status < 300:
        return "success"
    if chaos or code in UPSTREAM_CODES:
        return "upstream_error"
    if status == 429:
        return "throttle"
    if code in DENIAL_CODES or status in (401, 403):
        return "denial"
    return "sidecar_error"


POLICY = """version: 1
roles:
  scraper:
    allow: ["serpapi:search", "http_fetch:*"]
    concurrency: 64
    rules:
      - scope: "serpapi:search"
        guards: {{engines: [google, bing], max_num: 20}}
        rate: {{limit: 400, per: 1s, burst: 400}}
        quota: {{limit: {quota}, window: day, timezone: UTC}}
      - scope: "http_fetch:*"
        guards: {{schemes: [http, https], allow_hosts: ["127.0.0.1"], allow_cidrs: ["127.0.0.0/8"]}}
  enricher:
    allow: ["http_fetch:*", "openai:chat"]
    concurrency: 64
    rules:
      - scope: "openai:chat"
        guards: {{models: [gpt-4o-mini], max_tokens: 256}}
        rate: {{limit: 400, per: 1s, burst: 400}}
        budget: {{tokens: 100000000, window: day, timezone: UTC}}
      - scope: "http_fetch:*"
        guards: {{schemes: [http, https], allow_hosts: ["127.0.0.1"], allow_cidrs: ["127.0.0.0/8"]}}
  engager:
    allow: ["gmail_send:*", "openai:*"]
    concurrency: 64
    rules:
      - scope: "gmail_send:send"
        guards: {{allowed_domains: ["example.com"], max_recipients: 5}}
        quota: {{limit: 1000000, window: day, timezone: UTC}}
"""


def config(dirs, ports, upstream, redis_url):
    up = f"http://127.0.0.1:{upstream}"
    return f"""version: 1
listen: {{proxy: "127.0.0.1:{ports['proxy']}", admin: "127.0.0.1:{ports['admin']}"}}
state: {{dir: "{dirs['state']}"}}
policy: {{file: "{dirs['policy']}"}}
limits: {{drain_timeout: 5s}}
egress: {{allow_cidrs: ["127.0.0.0/8"]}}
log: {{access_log: false}}
admin: {{rate_limit: {{per_second: 1000, burst: 2000}}}}
{f'redis: {{url: "{redis_url}"}}' if redis_url else ''}
tools:
  serpapi: {{mode: live, base_url: "{up}"}}
  openai: {{mode: live, base_url: "{up}"}}
  gmail_send: {{mode: live, base_url: "{up}"}}
  http_fetch: {{mode: live, cache_ttl: 0s}}
"""


class Stack:
    """The upstream, an optional redis-server and the sidecar, started on free ports and stopped by PID."""

    def __init__(self, work: Path, binary: Path, with_redis: bool, quota: int):
        self.work = work
        self.procs = []
        self.upstream = subprocess.Popen([sys.executable, str(Path(__file__).with_name("upstream.py"))], stdout=subprocess.PIPE, text=True)
        self.procs.append(self.upstream)
        self.upstream_port = json.loads(self.upstream.stdout.readline())["port"]
        self.redis_url = None
        if with_redis:
            port = free_port()
            p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            self.redis_url = f"redis://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
        self.dirs = {"state": work / "state", "policy": work / "policy.yaml"}
        self.dirs["policy"].write_text(POLICY.format(quota=quota))
        self.ports = {"proxy": free_port(), "admin": free_port()}
        (work / "sidecar.yaml").write_text(config(self.dirs, self.ports, self.upstream_port, self.redis_url))
        # The OpenAI key is sealed in the vault (v1), so a mid-run rotation is the real one: a new sealed
        # version and SIGHUP.
        self.binary = binary
        self.kek = base64.b64encode(os.urandom(32)).decode()
        self.vault = self.dirs["state"] / "vault"
        self.vault.mkdir(parents=True, exist_ok=True)
        self.seal(KEYS["OPENAI_API_KEY"])
        env = {**os.environ, **KEYS, "SIDECAR_ADMIN_TOKEN": ADMIN, "SIDECAR_ID": "scenario-1", "KEK_BASE64": self.kek}
        for k in [k for k in env if k.lower().endswith("_proxy")]:
            del env[k]
        self.log = open(work / "sidecar.log", "w")
        self.sidecar = subprocess.Popen([str(binary), "run", "--config", str(work / "sidecar.yaml")], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(self.sidecar)
        self.proxy = f"http://127.0.0.1:{self.ports['proxy']}"
        self.admin = f"http://127.0.0.1:{self.ports['admin']}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports["proxy"]), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.ports["admin"]), timeout=0.2).close()
                return
            except OSError:
                if self.sidecar.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sidecar did not start; see " + str(work / "sidecar.log"))

    def seal(self, value):
        env = {**os.environ, "KEK_BASE64": self.kek, "SCENARIO_SECRET": value}
        p = subprocess.run([str(self.binary), "secrets", "seal", "--tool", "openai", "--from-env", "SCENARIO_SECRET", "--out", str(self.vault)],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError("secrets seal failed: " + p.stderr)
        return p.stdout.strip()

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close() if hasattr(self, "log") else None


def mail(i):
    raw = f"To: someone{i % 50}@example.com\r\nSubject: update {i}\r\n\r\nhello {i}"
    return {"raw": base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")}


def request_for(role, rng, i, upstream_port, probe):
    """(kind, method, path, json body): one call an agent of `role` would make; `probe`: one its role
    may not make (a denial, expected)."""
    page = f"/fetch?url=http%3A%2F%2F127.0.0.1%3A{upstream_port}%2Fpage"
    if probe:
        return rng.choice([("probe", "POST", "/gmail/v1/users/me/messages/send", mail(i)) if role != "engager" else
                           ("probe", "GET", "/serpapi/search?q=x&engine=google", None),
                           ("probe", "POST", "/openai/v1/chat/completions", {"model": "gpt-5-huge", "messages": [{"role": "user", "content": "x"}]})])
    if role == "scraper":
        return ("search", "GET", f"/serpapi/search?q=topic{i % 997}&engine=google&num=10", None) if rng.random() < 0.7 else ("fetch", "GET", page, None)
    if role == "enricher":
        if rng.random() < 0.6:
            return ("chat", "POST", "/openai/v1/chat/completions",
                    {"model": "gpt-4o-mini", "max_tokens": 64, "messages": [{"role": "user", "content": f"summarize item {i}"}]})
        return ("fetch", "GET", page, None)
    if rng.random() < 0.5:
        return ("gmail", "POST", "/gmail/v1/users/me/messages/send", mail(i))
    return ("chat", "POST", "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 64, "messages": [{"role": "user", "content": f"draft {i}"}]})


DIRECT = {"search": ("GET", "/search?q=topic&engine=google&num=10"), "fetch": ("GET", "/page"), "chat": ("POST", "/v1/chat/completions"),
          "gmail": ("POST", "/gmail/v1/users/me/messages/send")}


class Recorder:
    def __init__(self):
        self.hist = {c: HdrHistogram(1, 60_000_000, 3) for c in CLASSES}
        # Successes that went to the upstream (not answered from the sidecar's cache): what the
        # overhead against a direct call is computed from.
        self.uncached = HdrHistogram(1, 60_000_000, 3)
        self.cache_hits = 0
        self.kind_hist = {}
        self.direct = HdrHistogram(1, 60_000_000, 3)
        self.direct_kind = {}
        self.seconds = {}
        self.codes = {}
        self.late = 0
        self.sent = 0

    def add(self, second, cls, kind, code, latency_us, cached=False):
        self.sent += 1
        self.hist[cls].record_value(max(1, latency_us))
        if cls == "success" and cached:
            self.cache_hits += 1
        elif cls == "success":
            self.uncached.record_value(max(1, latency_us))
            self.kind_hist.setdefault(kind, HdrHistogram(1, 60_000_000, 3)).record_value(max(1, latency_us))
        s = self.seconds.setdefault(second, {"counts": {c: 0 for c in CLASSES}, "lat": []})
        s["counts"][cls] += 1
        s["lat"].append(latency_us)
        if code:
            self.codes[code] = self.codes.get(code, 0) + 1


def pct(h, p):
    return h.get_value_at_percentile(p) / 1000 if h.get_total_count() else None


async def scrape(session, admin):
    async with session.get(f"{admin}/metrics") as r:
        return await r.text()


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def stages_for(name, scale):
    """[(seconds, rate at start, rate at end)] and the mid-run changes [(offset s, action)]."""
    m = 60 * scale
    if name == "waves":
        return [(10 * m, 5, 60), (10 * m, 60, 60), (2 * m, 120, 120), (3 * m, 60, 60), (10 * m, 60, 80), (5 * m, 80, 5)], []
    if name == "chaos":
        return [(6 * m, 20, 20)], [(1 * m, "chaos_on"), (3 * m, "chaos_off")]
    if name == "stress":
        return [(60 * m, 20, 20)], []
    if name == "soak":
        h = 3600 * scale
        return [(24 * h, 10, 10)], [(2 * h, "rotate_credential"), (6 * h, "halve_quota"), (12 * h, "chaos_on"), (12 * h + 30 * m, "chaos_off")]
    raise SystemExit(f"unknown scenario {name}")


async def run_load(stack, tokens, stages, events, rec, timeline, scenario, rng, mix, runs=None):
    """Issues requests on the schedule the stages give; returns when the last one finished."""
    conn = aiohttp.TCPConnector(limit=2000, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200), timeout=timeout) as direct:
        t0 = time.monotonic()
        tasks = set()
        i = 0

        async def one(due, role, kind, method, path, body, headers):
            await asyncio.sleep(max(0, due - time.monotonic()))
            code = None
            chaos = False
            cached = False
            try:
                async with session.request(method, stack.proxy + path, json=body, headers=headers) as r:
                    data = await r.read()
                    status = r.status
                    chaos = "X-Chaos-Injected" in r.headers
                    cached = r.headers.get("X-Cache", "").upper() in ("HIT", "STALE")
                    if status >= 400:
                        try:
                            code = json.loads(data).get("code")
                        except ValueError:
                            code = None
            except Exception as e:  # a reset, a refused connection, a client timeout: the sidecar failed us
                status, code = 0, type(e).__name__
            latency = int((time.monotonic() - due) * 1_000_000)
            cls = classify(status, code, chaos)
            rec.add(int(due - t0), cls, kind, code if status != 200 else None, latency, cached)

        async def probe(due, kind):
            await asyncio.sleep(max(0, due - time.monotonic()))
            method, path = DIRECT[kind]
            body = {"raw": "eA"} if kind == "gmail" else ({"model": "gpt-4o-mini", "messages": []} if kind == "chat" else None)
            try:
                async with direct.request(method, f"http://127.0.0.1:{stack.upstream_port}{path}", json=body) as r:
                    await r.read()
                    us = int((time.monotonic() - due) * 1_000_000)
                    rec.direct.record_value(max(1, us))
                    rec.direct_kind.setdefault(kind, HdrHistogram(1, 60_000_000, 3)).record_value(max(1, us))
            except Exception:
                pass

        async def changes():
            for offset, action in events:
                await asyncio.sleep(max(0, t0 + offset - time.monotonic()))
                at = time.monotonic() - t0
                detail = await apply_change(session, stack, action)
                timeline.append({"t": round(at, 2), "action": action, "detail": detail})

        change_task = asyncio.create_task(changes())
        due = t0
        next_probe = t0
        roles = [r for r, _ in mix]
        weights = [w for _, w in mix]
        for seconds, start, end in stages:
            stage_start = due
            while due < stage_start + seconds:
                frac = (due - stage_start) / seconds if seconds else 1
                rate = max(0.5, start + (end - start) * frac)
                role = rng.choices(roles, weights)[0]
                probe_call = rng.random() < 0.03
                kind, method, path, body = request_for(role, rng, i, stack.upstream_port, probe_call)
                token = rng.choice(tokens[role])
                headers = {"X-Agent-Token": token}
                if runs is not None:
                    run = runs.pick(rng, TOKEN_AGENT.get(token))
                    if run:
                        headers["X-Run-Id"] = run
                # Wait until shortly before it is due, so tasks are not all created up front.
                lead = due - time.monotonic() - 0.05
                if lead > 0:
                    await asyncio.sleep(lead)
                if time.monotonic() - due > 1.0:
                    rec.late += 1
                tasks.add(asyncio.create_task(one(due, role, kind, method, path, body, headers)))
                if due >= next_probe and kind in DIRECT:
                    tasks.add(asyncio.create_task(probe(due, kind)))
                    next_probe = due + max(0.1, 1 / max(1.0, rate * 0.1))
                i += 1
                due += 1.0 / rate
                if len(tasks) > 5000:
                    done = {t for t in tasks if t.done()}
                    tasks -= done
        await asyncio.gather(*tasks)
        change_task.cancel()
        return time.monotonic() - t0


async def apply_change(session, stack, action):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    if action in ("chaos_on", "chaos_off"):
        # The whole chaos settings (PUT replaces them): 20 % of calls fail with a 5xx, up to 20 ms of jitter.
        body = {"enabled": action == "chaos_on", "seed": 7, "tools": {"*": {"error_rate": 0.2, "latency_min_ms": 0, "latency_max_ms": 20}}}
        async with session.put(f"{stack.admin}/api/chaos", json=body, headers=auth) as r:
            return f"PUT /api/chaos -> {r.status}"
    if action == "halve_quota":
        text = stack.dirs["policy"].read_text()
        m = re.search(r"quota: \{limit: (\d+)", text)
        new = int(m.group(1)) // 2
        stack.dirs["policy"].write_text(text.replace(f"quota: {{limit: {m.group(1)}", f"quota: {{limit: {new}", 1))
        os.kill(stack.sidecar.pid, signal.SIGHUP)
        return f"scraper search quota {m.group(1)} -> {new}, SIGHUP"
    if action == "rotate_credential":
        stack.seal(KEYS["OPENAI_API_KEY"] + "-rotated")
        os.kill(stack.sidecar.pid, signal.SIGHUP)
        return "sealed a new OpenAI key version, SIGHUP"
    return "unknown"


class Runs:
    """Agent runs for the stress scenario: created with 30 % client_token reuse, started, streamed over
    SSE (30 streams), 10 % cancelled mid-way."""

    def __init__(self):
        self.ids = []
        self.agent_of = {}
        self.cancelled = set()

    def pick(self, rng, agent):
        """Half the calls of an agent that has runs carry one of its own (a run is its agent's)."""
        live = [r for r in self.ids if r not in self.cancelled and self.agent_of.get(r) == agent]
        return rng.choice(live) if live and rng.random() < 0.5 else None


async def setup_runs(stack, runs, agents, rng, count=40):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    stats = {"created": 0, "reused": 0}
    async with aiohttp.ClientSession() as s:
        bodies = []
        for i in range(count):
            # 30 % repeat an earlier create exactly (same client_token, same body): the same run comes back.
            if bodies and rng.random() < 0.3:
                body = rng.choice(bodies)
            else:
                body = {"name": f"run-{i}", "client_token": f"stress-client-token-{i}", "agent_id": rng.choice(agents)}
                bodies.append(body)
            async with s.post(f"{stack.admin}/api/runs", json=body, headers=auth) as r:
                got = await r.json()
                if r.status == 200 and got.get("idempotent"):
                    stats["reused"] += 1
                    continue
                if r.status != 201:
                    stats.setdefault("refused", 0)
                    stats["refused"] += 1
                    stats["last_refusal"] = f"{r.status} {got.get('code')}"
                    continue
                run = got["run"]["id"]
                stats["created"] += 1
            async with s.post(f"{stack.admin}/api/runs/{run}/start", headers=auth) as r:
                if r.status == 200:
                    runs.ids.append(run)
                    runs.agent_of[run] = body["agent_id"]
    return stats


async def stream_runs(stack, runs, n, stop):
    """n concurrent SSE streams over the runs; counts events received."""
    got = {"events": 0, "streams": 0}

    async def one(run):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
                async with s.get(f"{stack.admin}/api/runs/{run}/events", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                    got["streams"] += 1
                    async for line in r.content:
                        if line.startswith(b"id:"):
                            got["events"] += 1
                        if stop.is_set():
                            return
        except Exception:
            return

    tasks = [asyncio.create_task(one(runs.ids[i % len(runs.ids)])) for i in range(n)] if runs.ids else []
    await stop.wait()
    for t in tasks:
        t.cancel()
    return got


async def cancel_some(stack, runs, rng, after):
    await asyncio.sleep(after)
    async with aiohttp.ClientSession() as s:
        for run in [r for r in runs.ids if rng.random() < 0.1]:
            async with s.post(f"{stack.admin}/api/runs/{run}/cancel", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                if r.status == 202:
                    runs.cancelled.add(run)


TOKEN_AGENT = {}


def make_tokens(stack, per_role=4, roles=("scraper", "enricher", "engager")):
    import urllib.request
    tokens, agents = {}, []

    def post(path, body):
        req = urllib.request.Request(stack.admin + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    for role in roles:
        tokens[role] = []
        for i in range(per_role):
            agent = post("/api/agents", {"name": f"{role}-{i}", "role": role, "created_by": "scenario"})["agent_id"]
            agents.append(agent)
            tokens[role].append(post(f"/api/agents/{agent}/tokens", {"ttl": "24h"})["token"])
            TOKEN_AGENT[tokens[role][-1]] = agent
    return tokens, agents


def sampler(pid, out, stop_flag):
    """CPU (user+system, seconds) and RSS (KiB) of the sidecar each second."""
    tick = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    while not stop_flag["stop"]:
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / tick
            rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
            out.append({"t": round(time.monotonic() - t0, 2), "cpu_s": cpu, "rss_kib": rss})
        except (OSError, StopIteration):
            return
        time.sleep(1)


async def scenario_main(args):
    out = Path(args.out or ROOT / "bench" / "results" / f"{args.scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"scenario-{args.scenario}-"))
    binary = Path(args.binary) if args.binary else next(
        (p for p in [ROOT / ".build/pgo/release/sidecar", ROOT / ".build/release/sidecar", ROOT / ".build/debug/sidecar"] if p.exists()), None)
    if binary is None:
        raise SystemExit("no sidecar binary: run make build or make release, or pass --binary")
    rng = random.Random(args.seed)
    stack = Stack(work, binary, args.redis, quota=10_000_000)
    import threading
    samples, flag = [], {"stop": False}
    thread = threading.Thread(target=sampler, args=(stack.sidecar.pid, samples, flag), daemon=True)
    thread.start()
    timeline, snapshots = [], []
    rec = Recorder()
    try:
        tokens, agents = make_tokens(stack)
        async with aiohttp.ClientSession() as s:
            before = await scrape(s, stack.admin)
        (out / "metrics-before.prom").write_text(before)
        mix = [("scraper", 60), ("enricher", 30), ("engager", 10)]
        extra = {}
        if args.scenario == "peak":
            extra = await run_peak(stack, tokens, rec, rng, mix, args)
            duration = extra["duration_s"]
        else:
            stages, events = stages_for(args.scenario, args.scale)
            runs = None
            stop = asyncio.Event()
            side = []
            if args.scenario == "stress":
                runs = Runs()
                used = [TOKEN_AGENT[t] for t in tokens["scraper"][:4] + tokens["enricher"][:3] + tokens["engager"][:3]]
                extra["runs"] = await setup_runs(stack, runs, used, rng)
                side.append(asyncio.create_task(stream_runs(stack, runs, 30, stop)))
                side.append(asyncio.create_task(cancel_some(stack, runs, rng, sum(s[0] for s in stages) / 2)))
            period = max(5.0, 600 * args.scale)

            async def snap():
                async with aiohttp.ClientSession() as s:
                    t0 = time.monotonic()
                    while not stop.is_set():
                        await asyncio.sleep(period)
                        try:
                            snapshots.append({"t": round(time.monotonic() - t0, 1), "metrics": parse_metrics(await scrape(s, stack.admin))})
                        except Exception:
                            pass
            side.append(asyncio.create_task(snap()))
            if args.scenario == "stress":
                tokens = {"scraper": tokens["scraper"][:4], "enricher": tokens["enricher"][:3], "engager": tokens["engager"][:3]}
                mix = [("scraper", 40), ("enricher", 30), ("engager", 30)]
            duration = await run_load(stack, tokens, stages, events, rec, timeline, args.scenario, rng, mix, runs)
            stop.set()
            results = await asyncio.gather(*side, return_exceptions=True)
            if args.scenario == "stress" and isinstance(results[0], dict):
                extra["sse"] = results[0]
                extra["runs"]["cancelled"] = len(runs.cancelled)
        async with aiohttp.ClientSession() as s:
            after = await scrape(s, stack.admin)
        (out / "metrics-after.prom").write_text(after)
    finally:
        flag["stop"] = True
        stack.stop()
        shutil.copy(work / "sidecar.log", out / "sidecar.log") if (work / "sidecar.log").exists() else None
    b, a = parse_metrics(before), parse_metrics(after)
    delta = {k: a[k] - b.get(k, 0) for k in a if a[k] != b.get(k, 0)}
    (out / "metrics-delta.json").write_text(json.dumps(delta, indent=1, sort_keys=True))
    (out / "metrics-periodic.json").write_text(json.dumps(snapshots))
    (out / "timeline.json").write_text(json.dumps(timeline, indent=1))
    (out / "samples.json").write_text(json.dumps(samples))
    total = {c: rec.hist[c].get_total_count() for c in CLASSES}
    served = sum(total.values())
    non_denied = served - total["denial"]
    lat = {c: {p: pct(rec.hist[c], p) for p in (50, 95, 99, 99.9)} for c in CLASSES if total[c]}
    uncached = {p: pct(rec.uncached, p) for p in (50, 95, 99)}
    direct = {p: pct(rec.direct, p) for p in (50, 95, 99)}
    overhead = {p: round(uncached[p] - direct[p], 3) if uncached[p] is not None and direct[p] is not None else None for p in (50, 95, 99)}
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"] if len(samples) > 1 else None
    result = {
        "scenario": args.scenario, "scale": args.scale, "seed": args.seed, "redis": bool(args.redis), "binary": str(binary),
        "cores": os.cpu_count(), "duration_s": round(duration, 1), "requests": served, "outcomes": total,
        "success_rate": round(total["success"] / non_denied, 6) if non_denied else None,
        "sidecar_error_rate": round(total["sidecar_error"] / served, 6) if served else None,
        "latency_ms": lat, "uncached_latency_ms": uncached, "direct_latency_ms": direct, "overhead_ms": overhead,
        "cache_hits_seen": rec.cache_hits,
        "overhead_by_kind_ms": {k: {p: round(pct(h, p) - pct(rec.direct_kind[k], p), 3) for p in (50, 99)}
                                for k, h in rec.kind_hist.items() if k in rec.direct_kind},
        "codes": rec.codes, "late_starts": rec.late, "cpu_seconds": cpu,
        "cpu_ms_per_request": round(cpu * 1000 / served, 3) if cpu and served else None,
        "rss_kib_max": max((s["rss_kib"] for s in samples), default=None),
        "per_second": [{"t": t, **s["counts"], "p50_ms": percentile(s["lat"], 50), "p99_ms": percentile(s["lat"], 99)}
                       for t, s in sorted(rec.seconds.items())],
        **extra,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("scenario", "requests", "outcomes", "success_rate", "sidecar_error_rate", "overhead_ms")}))
    print(f"results: {out}")
    return result


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100))] / 1000, 3)


async def run_peak(stack, tokens, rec, rng, mix, args):
    """Steps the rate up until p99 added latency passes 1 ms or the generator cannot keep up."""
    steps, rate, held = [], 200.0, None
    t_start = time.monotonic()
    while rate < 100_000 and len(steps) < 20:
        step = Recorder()
        await run_load(stack, tokens, [(10 * max(args.scale, 0.1), rate, rate)], [], step, [], "peak", rng, mix)
        achieved = step.sent / (10 * max(args.scale, 0.1))
        p99 = pct(step.uncached, 99)
        d99 = pct(step.direct, 99)
        added = round(p99 - d99, 3) if p99 is not None and d99 is not None else None
        steps.append({"rate": round(rate), "achieved": round(achieved), "p99_ms": p99, "direct_p99_ms": d99, "added_p99_ms": added,
                      "sidecar_errors": step.hist["sidecar_error"].get_total_count(), "late": step.late})
        for c in CLASSES:
            rec.hist[c].add(step.hist[c])
        rec.uncached.add(step.uncached)
        rec.direct.add(step.direct)
        if added is None or added > 1.0 or step.late > 0 or step.hist["sidecar_error"].get_total_count():
            break
        held = round(rate)
        rate *= 1.25
    limited = steps and steps[-1]["late"] > 0
    return {"peak": {"held_req_s": held, "cores": os.cpu_count(), "steps": steps,
                     "stopped_by": "generator could not keep the schedule" if limited else "p99 added latency over 1 ms or errors"},
            "duration_s": time.monotonic() - t_start}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["waves", "chaos", "stress", "soak", "peak"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every duration (CI: 0.05)")
    ap.add_argument("--redis", action="store_true", help="run the sidecar on a real redis-server (the fleet's store)")
    ap.add_argument("--binary", help="sidecar binary (default: the newest of pgo/release/debug builds)")
    ap.add_argument("--out", help="results folder (default bench/results/<scenario>-<UTC time>)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    asyncio.run(scenario_main(args))


if __name__ == "__main__":
    main()
