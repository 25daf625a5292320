#!/usr/bin/env python3
"""Training run for the profile-guided release build (scripts/pgo.sh).

Starts a local keep-alive upstream (SerpAPI- and OpenAI-shaped JSON answers), two instances of the
instrumented sidecar given as argv[1] (authentication off, and on with a minted agent token), and
drives a fixed mix of calls through them from 16 keep-alive connections: the serpapi reverse route
(most of it: it is the benchmark's path), the forward proxy, OpenAI chat with usage, the
/api/proxy-request envelope and refusals (no token: 401; unknown route: 404). Each sidecar writes
its counters to $LLVM_PROFILE_FILE when it exits on SIGTERM.

Bounded: at most REQUESTS calls (default 40 000) or SECONDS (default 60) of load, everything on
127.0.0.1 on free ports, every process stopped by PID.
"""
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SERP = json.dumps({"search_metadata": {"status": "Success"},
                   "organic_results": [{"position": 1, "title": "train", "link": "https://example.com/"}]}).encode()
CHAT = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = CHAT if "chat/completions" in self.path else SERP
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"pgo-train: the sidecar exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("pgo-train: the sidecar did not become ready")


def admin(port: int, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=5))


def calls(open_port: int, auth_port: int, agent_token: str):
    """The mix, as (port, method, target, headers, body); cycled by every connection."""
    chat = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    envelope = json.dumps({"tool": "serpapi", "action": "search", "params": {"q": "train"}}).encode()
    tok = {"X-Agent-Token": agent_token}
    json_h = {"Content-Type": "application/json"}
    mix = [(open_port, "GET", "/serpapi/search?q=train", {}, None)] * 6
    mix += [(auth_port, "GET", "/serpapi/search?q=train", tok, None)] * 6
    mix += [(open_port, "GET", "http://serpapi.com/search?q=train&num=3", {}, None)] * 2
    mix += [(open_port, "POST", "/openai/v1/chat/completions", json_h, chat)] * 2
    mix += [(auth_port, "POST", "/openai/v1/chat/completions", {**tok, **json_h}, chat)]
    mix += [(open_port, "POST", "/api/proxy-request", json_h, envelope)]
    mix += [(auth_port, "GET", "/serpapi/search?q=train", {}, None)]  # 401
    mix += [(open_port, "GET", "/nowhere", {}, None)]  # 404
    return mix


def drive(mix, requests: int, seconds: float, connections: int = 16) -> int:
    done = [0] * connections
    deadline = time.monotonic() + seconds

    def worker(i: int):
        conns = {}
        n = 0
        while n < requests // connections and time.monotonic() < deadline:
            port, method, target, headers, body = mix[(i + n) % len(mix)]
            c = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conns[port] = c
            try:
                c.request(method, target, body=body, headers=headers)
                c.getresponse().read()
            except (OSError, http.client.HTTPException):
                c.close()
                conns.pop(port, None)
            n += 1
        done[i] = n
        for c in conns.values():
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def main():
    binary = sys.argv[1]
    requests = int(os.environ.get("REQUESTS", "40000"))
    seconds = float(os.environ.get("SECONDS", "60"))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}"
    work = tempfile.mkdtemp(prefix="pgo-train-")
    procs = []
    try:
        ports = {}
        for name, auth in (("open", "false"), ("auth", "true")):
            proxy, adm = free_port(), free_port()
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(f"""version: 1
listen: {{proxy: "127.0.0.1:{proxy}", admin: "127.0.0.1:{adm}"}}
auth: {{required: {auth}}}
state: {{dir: "{work}/state-{name}"}}
tools:
  serpapi: {{mode: live, base_url: "{base}", cache_ttl: 0s}}
  openai: {{mode: live, base_url: "{base}"}}
""")
            env = dict(os.environ, SERPAPI_API_KEY="train-key", OPENAI_API_KEY="sk-train",
                       SIDECAR_ADMIN_TOKEN="train-admin-0123456789abcdef")
            log = open(f"{work}/{name}.log", "w")
            p = subprocess.Popen([binary, "run", "--config", f"{work}/{name}.yaml"], env=env, stdout=log, stderr=log)
            procs.append(p)
            wait_ready(adm, p)
            ports[name] = (proxy, adm)
        token = "train-admin-0123456789abcdef"
        agent = admin(ports["auth"][1], token, "/api/agents", {"name": "train", "role": "scraper", "created_by": "pgo"})
        minted = admin(ports["auth"][1], token, f"/api/agents/{agent['agent_id']}/tokens", {"ttl": "1h"})
        started = time.monotonic()
        n = drive(calls(ports["open"][0], ports["auth"][0], minted["token"]), requests, seconds)
        print(f"pgo-train: {n} calls in {time.monotonic() - started:.1f} s", file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        upstream.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
