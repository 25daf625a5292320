"""`upstream.proxy`: the brokered calls leave through an HTTP egress proxy (a corporate proxy on a host with no
route out of its own) — a CONNECT tunnel to the https upstream, TLS end to end, the proxy's own credentials
sent to the proxy only and never printed."""

import base64
import socket
import subprocess
import threading
import time

import openai
import requests

from conftest import BIN, LIVE_ENV, LoopbackServer, free_port, live_config, read_head


class ConnectProxy(LoopbackServer):
    """A CONNECT-only HTTP proxy: records each request head, checks `Proxy-Authorization` when `password` is
    set (407 otherwise), then relays bytes both ways."""

    def __init__(self, user=None, password=None):
        self.user, self.password = user, password
        self.heads: list[str] = []
        super().__init__()

    def _serve(self, conn):
        with conn:
            head, rest = read_head(conn)
            if not head:
                return
            text = head.decode("latin-1")
            self.heads.append(text)
            method, target, _ = text.split("\r\n")[0].split(" ", 2)
            if self.password is not None:
                expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
                fields = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in text.split("\r\n")[1:] if ":" in l}
                if fields.get("proxy-authorization") != expected:
                    conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
                    return
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=5)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            pump = threading.Thread(target=self._relay, args=(upstream, conn), daemon=True)
            pump.start()
            self._relay(conn, upstream)
            pump.join(timeout=5)
            upstream.close()

    @staticmethod
    def _relay(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "via the proxy"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def test_brokered_calls_leave_through_the_egress_proxy_with_its_credentials_never_printed(pki, https_upstream, sidecar_factory):
    https_upstream.routes["/v1/chat/completions"] = lambda h, rec: https_upstream.send_json(h, 200, COMPLETION)
    proxy = ConnectProxy(user="svc-sidecar", password="p@ss w0rd")
    try:
        cfg = live_config(pki, https_upstream).replace(
            "upstream:\n", f"upstream:\n  proxy: \"http://svc-sidecar:p%40ss%20w0rd@127.0.0.1:{proxy.port}\"\n", 1)
        s = sidecar_factory(cfg, env=LIVE_ENV)
        client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0, timeout=15)
        for _ in range(3):
            assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content == "via the proxy"
        # Through a CONNECT tunnel to the upstream, kept alive (not one per call); the proxy saw no request.
        assert proxy.heads and all(h.startswith(f"CONNECT 127.0.0.1:{https_upstream.port} HTTP/1.1") for h in proxy.heads)
        assert not any("Bearer" in h or "sk-REAL" in h for h in proxy.heads)
        assert https_upstream.requests[-1].header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
        assert https_upstream.requests[-1].header("Proxy-Authorization") is None
        start = s.wait_for_log(lambda r: r.get("msg") == "starting")
        assert start["upstream_proxy"] == f"http://[credentials]@127.0.0.1:{proxy.port}"
        assert not any("p@ss" in l or "p%40ss" in l or "w0rd" in l for l in s.lines)
        # http_fetch does not go through it, and the operator is told.
        assert any("upstream.proxy" in l and "http_fetch" in l for l in s.lines)
    finally:
        proxy.close()


def test_a_proxy_that_refuses_or_is_gone_is_a_gateway_error_never_a_direct_call(pki, https_upstream, sidecar_factory):
    https_upstream.routes["/v1/chat/completions"] = lambda h, rec: https_upstream.send_json(h, 200, COMPLETION)
    proxy = ConnectProxy(user="svc", password="right")
    try:
        cfg = live_config(pki, https_upstream).replace("upstream:\n", f"upstream:\n  proxy: http://svc:wrong@127.0.0.1:{proxy.port}\n", 1)
        s = sidecar_factory(cfg, env=LIVE_ENV)
        token = s.new_token()
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {token}"}, timeout=15)
        assert r.status_code == 502 and r.json()["code"] == "upstream_unreachable" and "407" in r.json()["detail"], r.text
        assert "wrong" not in r.text and not https_upstream.requests
        assert proxy.heads and proxy.heads[0].startswith("CONNECT ")
    finally:
        proxy.close()
    # Nothing listens where the proxy should be (named in the environment this time).
    gone = sidecar_factory(live_config(pki, https_upstream), env={**LIVE_ENV, "SIDECAR_UPSTREAM_PROXY": f"http://127.0.0.1:{free_port()}"})
    r = requests.post(f"{gone.proxy_url}/openai/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {gone.new_token()}"}, timeout=15)
    assert r.status_code == 502 and r.json()["code"] == "upstream_unreachable" and not https_upstream.requests


def test_a_proxy_url_the_sidecar_cannot_use_is_a_config_error_that_never_echoes_it(tmp_path):
    for value, reason in [("https://proxy.corp:3128", "only an http:// proxy"), ("http://u:s3cret@proxy.corp", "needs a port"),
                          ("socks5://proxy.corp:1080", "only an http:// proxy"), ("http://proxy.corp:3128/path", "without a path"),
                          ("http://u:s3cret%zz@proxy.corp:3128", "percent-encoded"), ("proxy.corp:3128", "expected http://host:port")]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"version: 1\nupstream:\n  proxy: \"{value}\"\n")
        p = subprocess.run([str(BIN), "check-config", str(cfg)], capture_output=True, text=True)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "upstream.proxy" in out and reason in out, (value, out)
        assert "s3cret" not in out


def test_a_sidecar_configured_to_call_itself_refuses_the_loop_at_once(pki, sidecar_factory):
    """A careless configuration: a tool's base_url, or the egress proxy, pointing back at the sidecar. The
    request comes back carrying the Via mark the sidecar put on it and is answered 508 `forwarding_loop`
    at the first return — not sent round until a limit stops it (with authentication off nothing else would)."""
    port = free_port()
    env = {**LIVE_ENV, "SIDECAR_PROXY_LISTEN": f"127.0.0.1:{port}"}
    cfg = f"version: 1\nauth: {{required: false}}\ntools:\n  serpapi: {{mode: live, base_url: \"http://127.0.0.1:{port}/serpapi\"}}\n"
    s = sidecar_factory(cfg, env=env)
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=round", timeout=15)
    assert r.status_code == 508 and r.json()["code"] == "forwarding_loop", r.text
    s.wait_for_log(lambda l: l.get("msg") == "access" and l.get("tool") == "serpapi")
    time.sleep(0.3)
    assert sum(1 for l in s.lines if '"msg":"access"' in l) == 2  # the call, and its one return

    port = free_port()
    env = {**LIVE_ENV, "SIDECAR_PROXY_LISTEN": f"127.0.0.1:{port}"}
    cfg = (f"version: 1\nauth: {{required: false}}\nupstream: {{proxy: \"http://127.0.0.1:{port}\", ca_bundle: \"{pki.ca_pem}\"}}\n"
           "tools:\n  openai: {mode: live, base_url: \"https://api.openai.com\"}\n")
    s = sidecar_factory(cfg, env=env)
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, timeout=15)
    assert r.status_code in (502, 508), r.text
    s.wait_for_log(lambda l: l.get("msg") == "access" and l.get("tool") == "openai" and l.get("entry") == "reverse")
    time.sleep(0.3)
    assert sum(1 for l in s.lines if '"msg":"access"' in l) <= 3
