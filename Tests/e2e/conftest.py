"""End-to-end harness: the real `sidecar` binary, fake upstreams (HTTPS with a CA made at test time),
real clients. Everything binds 127.0.0.1 on port 0 and is stopped by PID when the test ends."""

import datetime
import http.server
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis as redis_py
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SIDECAR_BIN", ROOT / ".build" / "debug" / "sidecar"))


# ---------------------------------------------------------------- test PKI


class PKI:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""

    def __init__(self, directory: Path):
        self.dir = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        import ipaddress
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_pem = directory / "ca.pem"
        self.cert_pem = directory / "server.pem"
        self.key_pem = directory / "server.key"
        self.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_pem, self.key_pem)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------- fake upstream


class Recorded:
    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class FakeUpstream:
    """A threaded HTTP/1.1 server (TLS optional) that records every request and answers from `routes`:
    path prefix -> handler(request_handler, recorded). The default answers 200 with a small JSON body."""

    def __init__(self, tls_context=None):
        self.requests: list[Recorded] = []
        self.routes = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(self.command, self.path, list(self.headers.items()), body)
                outer.requests.append(rec)
                for prefix, fn in sorted(outer.routes.items(), key=lambda kv: -len(kv[0])):
                    if self.path.startswith(prefix):
                        return fn(self, rec)
                outer.send_json(self, 200, {"ok": True, "path": self.path.split("?")[0]})

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls_context else "http"
        self.base_url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def send_json(h, status, obj, extra_headers=()):
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in extra_headers:
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def https_upstream(pki):
    up = FakeUpstream(pki.server_context())
    yield up
    up.close()


@pytest.fixture
def http_upstream():
    up = FakeUpstream(None)
    yield up
    up.close()


# ---------------------------------------------------------------- streamed upstream answers


def sse_chunk(content=None, finish=None, usage=None):
    """One OpenAI chat-completion stream event (`data: {...}`), as the real API sends them."""
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [] if usage else [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body) + "\n\n"


def start_chunked(h, content_type="text/event-stream"):
    """Starts a 200 with a chunked body on a `FakeUpstream` handler; returns `send(text)` (one chunk,
    flushed) and `end()` (the last chunk)."""
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()

    def send(text):
        data = text.encode() if isinstance(text, str) else text
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    def end():
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    return send, end


# ---------------------------------------------------------------- raw loopback servers


class LoopbackServer:
    """A listening socket on a random loopback port; each accepted connection is served by `_serve` on a
    thread of its own until `close`."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        raise NotImplementedError

    def close(self):
        self.sock.close()


def read_head(sock) -> tuple[bytes, bytes]:
    """Reads from `sock` until a blank line ends a message head; returns the head and what came after it
    (the head alone, and nothing after, when the peer closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


# ---------------------------------------------------------------- ports and redis-server


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Redis:
    """A throwaway redis-server on a loopback port (random unless given); `start` again after `kill`
    brings it back on the same port."""

    def __init__(self, port=None, tls: "PKI | None" = None, password=None):
        self.port = port or free_port()
        self.tls, self.password = tls, password
        self.start()

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.tls:
            # TLS only, as managed Redis with in-transit encryption: the plain port is off.
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_pem),
                         "--tls-key-file", str(self.tls.key_pem), "--tls-ca-cert-file", str(self.tls.ca_pem), "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()  # no fixture teardown follows a constructor that raised
        raise RuntimeError("redis-server did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}localhost:{self.port}/0" if self.tls else f"redis://{auth}127.0.0.1:{self.port}/0"


class RedisCluster:
    """A throwaway Redis Cluster on loopback ports: `masters` masters (each with `replicas` replicas),
    made by `redis-cli --cluster create`, with a short node timeout so a failover takes about a second.
    Nodes are stopped by PID."""

    def __init__(self, directory: Path, masters=3, replicas=0, tls: "PKI | None" = None):
        """With `tls`, every node listens with TLS only (clients, replication and the cluster bus), as a
        managed cluster with in-transit encryption; `url` is then `rediss+cluster://`. (The bus is mutual
        TLS: the PKI's certificate serves as the nodes' client certificate too.)"""
        self.directory = directory
        self.tls = tls
        self.ports = []
        while len(self.ports) < masters * (1 + replicas):
            port = self.free_node_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs = {}
        try:
            for port in self.ports:
                self.start_node(port)
            subprocess.run(["redis-cli", *self.cli_tls(), "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", str(replicas), "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self.wait_ok()
            deadline = time.time() + 30
            while replicas and not all(self.node(p).info("replication").get("master_link_status", "up") == "up" for p in self.ports):
                assert time.time() < deadline, "replicas did not sync"
                time.sleep(0.1)
        except BaseException:
            # The fixture's teardown never runs for a constructor that raised: the nodes started so far
            # would outlive the test run.
            self.stop()
            raise

    @staticmethod
    def free_node_port():
        """A free port whose cluster bus port (+10000) is free too (an ephemeral port's may not exist)."""
        import random
        for _ in range(200):
            port = random.randint(20000, 29999)
            try:
                for p in (port, port + 10000):
                    s = socket.socket()
                    try:
                        s.bind(("127.0.0.1", p))
                    finally:
                        s.close()
                return port
            except OSError:
                continue
        raise RuntimeError("no free port pair")

    def cli_tls(self):
        return ["--tls", "--cacert", str(self.tls.ca_pem)] if self.tls else []

    def start_node(self, port):
        d = self.directory / f"node-{port}"
        d.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(port)]
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes", "--tls-replication", "yes",
                      "--tls-cert-file", str(self.tls.cert_pem), "--tls-key-file", str(self.tls.key_pem),
                      "--tls-ca-cert-file", str(self.tls.ca_pem), "--tls-auth-clients", "no"]
        self.procs[port] = subprocess.Popen(
            ["redis-server", *listen, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "1000", "--save", "",
             "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", str(d), "--logfile", str(d / "log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def node(self, port):
        if self.tls:
            return redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=5, ssl=True, ssl_ca_certs=str(self.tls.ca_pem))
        return redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def live_ports(self):
        return [p for p in self.ports if self.procs[p].poll() is None]

    def wait_ok(self, timeout=30):
        """Until every live node says cluster_state:ok and they agree on who serves every slot."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if all(self.node(p).execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0 for p in self.live_ports()):
                    if len({tuple(sorted(self.slot_owners(p).items())) for p in self.live_ports()}) == 1:
                        return
            except redis_py.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster did not settle")

    def slot_owners(self, port=None):
        """{(first, last): master port} as one node sees it."""
        rows = self.node(port or self.live_ports()[0]).execute_command("CLUSTER", "SLOTS")
        return {(row[0], row[1]): row[2][1] for row in rows}

    def keyslot(self, key):
        return self.node(self.live_ports()[0]).execute_command("CLUSTER", "KEYSLOT", key)

    def owner(self, slot):
        for (first, last), port in self.slot_owners().items():
            if first <= slot <= last:
                return port
        raise KeyError(slot)

    def node_id(self, port):
        return self.node(port).execute_command("CLUSTER", "MYID").decode()

    def masters(self):
        return sorted(set(self.slot_owners().values()))

    @property
    def url(self):
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def kill(self, port):
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- the sidecar process


class Sidecar:
    """The real binary with a YAML config, on port 0; addresses are read from its 'listening' log lines."""

    def __init__(self, config_yaml: str | None, env: dict | None = None, args=None):
        self.dir = Path(tempfile.mkdtemp(prefix="sidecar-e2e-"))
        cmd = [str(BIN), "run"]
        if config_yaml is not None:
            path = self.dir / "sidecar.yaml"
            path.write_text(config_yaml)
            cmd += ["--config", str(path)]
        cmd += list(args or [])
        full_env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
        full_env.setdefault("SIDECAR_PROXY_LISTEN", "127.0.0.1:0")
        full_env.setdefault("SIDECAR_ADMIN_LISTEN", "127.0.0.1:0")
        full_env.update(env or {})
        self.state_dir = Path(full_env.get("SIDECAR_STATE_DIR") or (self.dir / ".state"))
        self.lines: list[str] = []
        self._q: "queue.Queue[str]" = queue.Queue()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=self.dir)
        threading.Thread(target=self._pump, daemon=True).start()
        self.proxy = self.admin = None
        deadline = time.time() + 30
        while (self.proxy is None or self.admin is None) and time.time() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if '"msg":"listening"' in line:
                rec = json.loads(line)
                setattr(self, rec["listener"], rec["address"])
        if self.proxy is None or self.admin is None:
            self.stop()
            raise RuntimeError("sidecar did not start:\n" + "\n".join(self.lines[-30:]))
        self.proxy_url = f"http://{self.proxy}"
        self.admin_url = f"http://{self.admin}"
        self.proxy_port = int(self.proxy.rsplit(":", 1)[1])

    @property
    def admin_token(self):
        return (self.state_dir / "admin.token").read_text().strip()

    def admin_request(self, method, path, json_body=None, token=None, **kw):
        import requests
        headers = kw.pop("headers", {})
        headers.setdefault("Authorization", f"Bearer {token or self.admin_token}")
        return requests.request(method, f"{self.admin_url}{path}", json=json_body, headers=headers, timeout=10, **kw)

    def new_agent(self, role="developer", name="agent"):
        r = self.admin_request("POST", "/api/agents", {"name": name, "role": role, "created_by": "e2e"})
        assert r.status_code == 201, r.text
        return r.json()["agent_id"]

    def new_token(self, agent_id=None, ttl="10m", scopes=None, role="developer"):
        agent_id = agent_id or self.new_agent(role=role)
        body = {"ttl": ttl}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.admin_request("POST", f"/api/agents/{agent_id}/tokens", body)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def proxy_url_with(self, token):
        return f"http://agent:{token}@{self.proxy}"

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._q.put(line)

    def logs(self, msg=None):
        out = []
        for line in list(self.lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if msg is None or rec.get("msg") == msg:
                out.append(rec)
        return out

    def wait_for_log(self, predicate, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for rec in self.logs():
                if predicate(rec):
                    return rec
            time.sleep(0.02)
        raise AssertionError("log line not seen; last lines:\n" + "\n".join(self.lines[-20:]))

    def access(self, request_id):
        return self.wait_for_log(lambda r: r.get("msg") == "access" and r.get("request_id") == request_id)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def sidecar_factory():
    started = []

    def start(config_yaml=None, env=None, args=None):
        s = Sidecar(config_yaml, env, args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def live_config(pki, upstream, extra: str = "", tools_extra: str = "", auth: bool = True, http2: bool = True) -> str:
    """Every brokered tool live against `upstream`, which the sidecar trusts through the test CA.
    With `http2=False`, TLS upstreams go through the sidecar's own HTTP/1.1 pool instead of
    async-http-client (cleartext upstreams always do)."""
    auth_block = "" if auth else "auth:\n  required: false\n"
    return f"""
version: 1
{auth_block}upstream:
  ca_bundle: {pki.ca_pem}
  http2: {"true" if http2 else "false"}
limits:
  drain_timeout: 10s
egress:
  allow_cidrs: ["127.0.0.0/8"]   # the fake upstreams run on loopback, which http_fetch refuses by default
tools:
  serpapi: {{mode: live, base_url: "{upstream.base_url}", hosts: [serpapi.com], timeout: 3s}}
  openai: {{mode: live, base_url: "{upstream.base_url}", timeout: 5s}}
  gmail_send: {{mode: live, base_url: "{upstream.base_url}"}}
  http_fetch: {{mode: live, timeout: 3s}}
{tools_extra}
{extra}
"""


LIVE_ENV = {"SERPAPI_API_KEY": "serp-REAL-0123456789", "OPENAI_API_KEY": "sk-REAL-0123456789abcdef",
            "GMAIL_ACCESS_TOKEN": "ya29.REAL-gmail-token"}


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends bytes on a fresh connection and returns the first response: read until the head and a body
    of Content-Length bytes have arrived, or until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if m and len(body) >= int(m.group(1)):
                    return out
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def parse_response(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


# ---------------------------------------------------------------- real tool clients, unmodified


CLIENT_VENVS = ROOT / ".build" / "e2e-clients"
# The official `serpapi` package and `google-search-results` both install a module named `serpapi`:
# each set gets its own virtual environment.
CLIENT_SETS = {
    "main": ["openai", "serpapi", "requests", "httpx", "google-api-python-client", "google-auth", "PySocks", "aiohttp"],
    "gsr": ["google-search-results", "requests"],
    "agents": ["openai-agents"],
}


def client_python(name: str) -> Path:
    """The python of a virtual environment holding the client set `name`, made (pip, once) on first use."""
    venv = CLIENT_VENVS / name
    marker = venv / ".installed"
    wanted = " ".join(CLIENT_SETS[name])
    if not (marker.exists() and marker.read_text() == wanted):
        subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *CLIENT_SETS[name]], check=True, timeout=900)
        marker.write_text(wanted)
    return venv / "bin" / "python"


def metric(text: str, name: str, **labels) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def redis():
    """A redis-server of the test's own on a free port, killed after the test."""
    r = Redis()
    yield r
    r.kill()
