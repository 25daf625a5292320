"""Admin port, metrics, configuration CLI and graceful shutdown."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import BIN, LIVE_ENV, Sidecar, live_config


def test_health_readiness_and_metrics_pass_promtool(sidecar_factory, tmp_path):
    s = sidecar_factory(None)
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{s.admin_url}/readyz", timeout=5).json()["status"] == "ready"
    proxy = s.proxy_url_with(s.new_token())
    for _ in range(5):
        requests.get("http://serpapi.com/search?q=x", proxies={"http": proxy}, timeout=5)
    requests.get(f"{s.proxy_url}/nothing", timeout=5)
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert 'gateway_requests_total{tool="serpapi",action="search",code="2xx"} 5' in text
    assert 'gateway_outcomes_total{tool="none",outcome="route_not_found"} 1' in text
    assert "gateway_request_duration_seconds_bucket" in text and "gateway_upstream_duration_seconds_bucket" in text
    assert "gateway_requests_in_flight" in text and 'gateway_build_info{version="' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/nothing"), ("DELETE", "/api/runs"), ("PUT", "/api/agents"),
                                         ("POST", "/healthz"), ("DELETE", "/metrics"), ("GET", "/api")])
def test_the_admin_port_answers_a_missing_route_with_a_problem(sidecar_factory, method, path):
    s = sidecar_factory(None)
    for token in (s.admin_token, None):  # with the admin token or without, the same answer
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = requests.request(method, f"{s.admin_url}{path}", headers=headers, timeout=5)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", (r.status_code, r.headers, r.text)
        assert r.json()["code"] == "route_not_found" and r.json()["request_id"] == r.headers["x-request-id"]
    # The routes themselves are unchanged.
    assert requests.get(f"{s.admin_url}/ca.pem", timeout=5).text.startswith("-----BEGIN CERTIFICATE-----")
    assert s.admin_request("GET", "/api/runs").status_code == 200


def test_ca_pem_with_interception_off_is_a_problem(sidecar_factory):
    s = sidecar_factory("version: 1\nintercept: {enabled: false}\n")
    r = requests.get(f"{s.admin_url}/ca.pem", timeout=5)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert "intercept.enabled" in r.json()["detail"]


def test_readiness_does_not_flap_under_load(sidecar_factory):
    s = sidecar_factory(None)
    stop = threading.Event()
    token = s.new_token()

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                session.get(f"{s.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=5)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(50):
            assert requests.get(f"{s.admin_url}/readyz", timeout=5).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_sigterm_lets_an_in_flight_request_finish_and_exits_zero(pki, https_upstream, sidecar_factory):
    def slow(h, rec):
        time.sleep(1.5)
        https_upstream.send_json(h, 200, {"slow": True})

    https_upstream.routes["/search"] = slow
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    result = {}
    token = s.new_token()

    def call():
        result["r"] = requests.get(f"{s.proxy_url}/serpapi/search?q=slow", headers={"X-Agent-Token": token}, timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    s.signal(signal.SIGTERM)
    time.sleep(0.2)
    # New connections are refused while the old request drains.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{s.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=2)
    t.join(timeout=10)
    assert result["r"].status_code == 200 and result["r"].json() == {"slow": True}
    assert result["r"].headers.get("Connection", "").lower() == "close"
    assert s.proc.wait(timeout=10) == 0
    assert any(l.get("msg") == "proxy listener drained" for l in s.logs())


def test_check_config_names_the_offending_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\ntools:\n  openai: {mode: mock}\n")
    p = subprocess.run([str(BIN), "check-config", str(good)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntools:\n  openai: {mode: mock, timeout: forever}\n")
    p = subprocess.run([str(BIN), "check-config", str(bad)], capture_output=True, text=True)
    assert p.returncode != 0
    assert "tools.openai.timeout" in p.stderr
    # Valid but most likely not meant: named, not refused — by check-config and in one line at start.
    risky = tmp_path / "risky.yaml"
    risky.write_text('version: 1\ntools:\n  openai: {mode: live, base_url: "http://api.openai.com"}\negress:\n  allow_cidrs: ["0.0.0.0/0"]\n')
    p = subprocess.run([str(BIN), "check-config", str(risky)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert [l.split(":")[1].strip() for l in p.stdout.splitlines() if l.startswith("warning:")] == ["tools.openai.base_url", "egress.allow_cidrs[0]"]
    s = Sidecar(risky.read_text(), env={"OPENAI_API_KEY": "sk-REAL-0123456789abcdef"})
    try:
        fields = sorted(r["field"] for r in s.logs("risky setting"))
        assert fields == ["egress.allow_cidrs[0]", "tools.openai.base_url"] and "sk-REAL" not in "\n".join(s.lines)
    finally:
        s.stop()
    # A key file others may read, and an unauthenticated proxy listening beyond loopback.
    kek = tmp_path / "kek"
    kek.write_text("k" * 32)
    kek.chmod(0o644)
    open_proxy = tmp_path / "open.yaml"
    open_proxy.write_text(f"version: 1\nauth: {{required: false}}\nlisten: {{proxy: '0.0.0.0:0'}}\nvault: {{kek_file: {kek}}}\n")
    p = subprocess.run([str(BIN), "check-config", str(open_proxy)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert [l.split(":")[1].strip() for l in p.stdout.splitlines() if l.startswith("warning:")] == ["vault.kek_file", "auth.required"]
    kek.chmod(0o600)
    p = subprocess.run([str(BIN), "check-config", str(open_proxy)], capture_output=True, text=True)
    assert [l.split(":")[1].strip() for l in p.stdout.splitlines() if l.startswith("warning:")] == ["auth.required"]
    p = subprocess.run([str(BIN), "version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("sidecar ")


def test_deploy_examples_are_valid():
    from conftest import ROOT
    for path in sorted((ROOT / "deploy").glob("*.yaml")):
        if path.name.startswith("policy"):
            p = subprocess.run([str(BIN), "check-policy", str(path)], capture_output=True, text=True)
        elif path.name.startswith("sidecar"):
            p = subprocess.run([str(BIN), "check-config", str(path)], capture_output=True, text=True)
        elif path.name == "alerts.yaml" and shutil.which("promtool"):
            p = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        elif path.name == "prometheus.yaml" and shutil.which("promtool"):
            p = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, cwd=path.parent)
        else:
            continue
        assert p.returncode == 0, (path, p.stdout, p.stderr)
    import json
    json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())


def test_check_policy_names_the_offending_field(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nroles:\n  r:\n    allow: [\"serpapi:search\"]\n    rules:\n      - {scope: \"serpapi:search\", rate: {limit: 5, per: soon}}\n")
    p = subprocess.run([str(BIN), "check-policy", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1 and "roles.r.rules[0].rate.per" in p.stderr


def test_a_stalled_log_reader_does_not_stall_the_proxy(tmp_path):
    """Standard output is a pipe nobody reads (a stuck log collector): once its 64 KiB are full, every
    further write to it blocks. The proxy must keep answering — access lines wait in the writer's
    buffer, off the event loops — and once the reader catches up, every line arrives whole."""
    from conftest import free_port

    proxy_port, admin_port = free_port(), free_port()
    (tmp_path / "sidecar.yaml").write_text(
        f"""version: 1
listen: {{proxy: "127.0.0.1:{proxy_port}", admin: "127.0.0.1:{admin_port}"}}
auth: {{required: false}}
state: {{dir: "{tmp_path / 'state'}"}}
tools:
  serpapi: {{mode: mock}}
""")
    admin_token = "stalled-reader-admin-token-0123456789"
    proc = subprocess.Popen([str(BIN), "run", "--config", str(tmp_path / "sidecar.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "SIDECAR_ADMIN_TOKEN": admin_token})
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        n = 1500  # about 0.6 MB of access lines: ten times what the pipe holds
        with requests.Session() as session:
            for i in range(n):
                r = session.get(f"http://127.0.0.1:{proxy_port}/serpapi/search?q=x",
                                headers={"X-Request-Id": f"stall-{i}"}, timeout=5)
                assert r.status_code == 200
        # Other log lines too: each chaos change logs a notice from the admin server's event loop, which
        # must not wait for the full pipe either (it did before they went through the writer).
        for i in range(100):
            r = requests.put(f"http://127.0.0.1:{admin_port}/api/chaos", json={"enabled": False},
                             headers={"Authorization": f"Bearer {admin_token}"}, timeout=5)
            assert r.status_code == 200, r.text
        metrics = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
        assert "gateway_access_log_dropped_lines_total 0" in metrics

        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
        reader.start()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in out[0].decode().splitlines()]  # every line whole JSON
    ids = [r["request_id"] for r in lines if r.get("msg") == "access"]
    assert ids == [f"stall-{i}" for i in range(n)]
    msgs = [r.get("msg") for r in lines]
    assert msgs.count("chaos updated") == 100
    last_access = max(i for i, m in enumerate(msgs) if m == "access")
    assert msgs.index("chaos updated") > last_access  # in the order they were logged
