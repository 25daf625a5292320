#!/usr/bin/env python3
"""Experiment 4 — gmail. Chaos on gmail_send with the explicit opt-in (errors, 429s, timeouts, truncated
bodies, latency): every message is sent by the agent exactly once, and the fake Gmail must record zero
duplicate sends — the sidecar never retries a send, whatever the failure. The injected 429s carry
`Retry-After: 0`: a 429 with a real wait hint would pause gmail_send for every agent (tool_throttled, tested
end to end), and this experiment is about what happens to the sends that do go out."""

import base64
import collections
import threading

import requests

from harness import session, PKI, Experiment, FakeUpstream, drive, live_sidecar, metric, tmpdir

MESSAGES = 300


def main(ex):
    pki = PKI(tmpdir("pki"))
    up = FakeUpstream(pki.server_context())
    ex.cleanup.append(up.close)
    received, lock = collections.Counter(), threading.Lock()

    def send(h, rec):
        import json
        raw = json.loads(rec.body)["raw"]
        msg = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        subject = next(line for line in msg.split("\r\n") if line.startswith("Subject:"))
        with lock:
            received[subject] += 1
        FakeUpstream.send_json(h, 200, {"id": f"m{len(received)}", "threadId": "t", "labelIds": ["SENT"]})

    up.routes["/gmail/v1/users/me/messages/send"] = send
    extra = """
chaos:
  enabled: true
  seed: 4
  gmail_opt_in: true
  tools:
    gmail_send: {error_rate: 0.2, error_statuses: [500, 503], rate_limit_rate: 0.1, retry_after: 0, timeout_rate: 0.05, truncate_rate: 0.1, latency_min_ms: 0, latency_max_ms: 20}
"""
    s = live_sidecar(pki, up, extra=extra)
    ex.cleanup.append(s.stop)
    token = s.new_token()

    def call(i):
        raw = base64.urlsafe_b64encode(f"To: a@example.com\r\nSubject: message {i}\r\n\r\nhello {i}".encode()).decode().rstrip("=")
        try:
            r = session().post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", json={"raw": raw}, headers={"Authorization": f"Bearer {token}",
                             "X-Request-Timeout": "1s"}, timeout=10)
            return r.status_code, r.headers.get("X-Chaos-Injected")
        except requests.exceptions.RequestException:
            return "broken", "truncate"

    results = drive(call, threads=6, seconds=60, max_calls=MESSAGES)
    kinds = collections.Counter(k or "none" for _, (_, k) in results)
    dupes = {k: v for k, v in received.items() if v > 1}
    retries = metric(s, "gateway_retries_total", tool="gmail_send") or 0
    ex.figure("messages sent by the agent", len(results))
    ex.figure("agent-side outcomes by injected fault", dict(kinds))
    ex.figure("delivered to the fake Gmail", f"{sum(received.values())} ({len(received)} distinct)")
    ex.check("every message was attempted", len(results) == MESSAGES)
    ex.check("chaos really hit gmail_send", (metric(s, "gateway_chaos_injected_total", tool="gmail_send") or 0) > MESSAGES * 0.2,
             f"{metric(s, 'gateway_chaos_injected_total', tool='gmail_send'):.0f} injections")
    ex.check("zero duplicate sends recorded by the fake upstream", not dupes, f"{len(dupes)} duplicated subjects")
    ex.check("zero sidecar retries of gmail_send", retries == 0, f"gateway_retries_total{{tool=gmail_send}} = {retries:.0f}")


if __name__ == "__main__":
    raise SystemExit(Experiment.run("gmail", main))
