#!/usr/bin/env python3
"""SSE fan-out latency: STREAMS event streams on one run, CALLS tool calls in that run one after another.
For every call and every stream: the time from the agent holding the call's answer to the stream holding
the call's event (matched by request id). All streams are read by one thread with a selector, so the
reader does not add a thread switch per stream; the calls are made from another thread."""

import argparse
import json
import selectors
import socket
import threading
import time
import urllib.parse
import http.client


def open_stream(admin, token, run):
    u = urllib.parse.urlparse(admin)
    s = socket.create_connection((u.hostname, u.port))
    s.sendall((f"GET /api/runs/{run}/events HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode())
    s.setblocking(False)
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--admin"), p.add_argument("--proxy"), p.add_argument("--admin-token"), p.add_argument("--token"), p.add_argument("--run")
    p.add_argument("--streams", type=int, default=100), p.add_argument("--calls", type=int, default=300)
    a = p.parse_args()

    sel = selectors.DefaultSelector()
    buffers = {}
    for _ in range(a.streams):
        s = open_stream(a.admin, a.admin_token, a.run)
        sel.register(s, selectors.EVENT_READ)
        buffers[s] = b""
    received = {}  # request id -> list of arrival times
    answered = {}  # request id -> time the agent held the answer
    stop = threading.Event()

    def read():
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                now = time.monotonic()
                if not data:
                    sel.unregister(s)
                    continue
                buf = buffers[s] + data
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: "):
                            try:
                                d = json.loads(line[6:])
                            except ValueError:
                                continue
                            rid = d.get("request_id")
                            if rid:
                                received.setdefault(rid, []).append(now)
                buffers[s] = buf

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)  # every stream connected and replayed its backlog
    u = urllib.parse.urlparse(a.proxy)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    for i in range(a.calls):
        conn.request("GET", f"/serpapi/search?q=fanout{i}&num=10", headers={"Authorization": f"Bearer {a.token}", "X-Run-Id": a.run})
        r = conn.getresponse()
        r.read()
        answered[r.getheader("X-Request-Id")] = time.monotonic()
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(len(received.get(rid, [])) for rid in answered) < a.calls * a.streams:
        time.sleep(0.05)
    stop.set()
    lat = sorted((t - answered[rid]) * 1000 for rid in answered for t in received.get(rid, []))
    missing = a.calls * a.streams - len(lat)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    print(f"SSE fan-out: {a.streams} streams on one run, {a.calls} calls: {len(lat)} deliveries ({missing} missing); "
          f"event delivery after the agent's answer p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lat[-1] if lat else float('nan'):.1f} ms "
          f"(target p99 < 50 ms)")


if __name__ == "__main__":
    main()
