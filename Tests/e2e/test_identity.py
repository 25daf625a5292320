"""Agent tokens end to end: JOSE interop with joserfc, the forgery table over HTTP, revocation,
provenance, persistence across restarts, the CLI."""

import base64
import json
import os
import stat
import subprocess
import time

import pytest
import requests
from cryptography.hazmat.primitives import hashes, hmac
from joserfc import jwe, jws
from joserfc.jwk import ECKey, RSAKey

from conftest import BIN, Sidecar

ALGS = ["RSA-OAEP-256", "A256GCM"]


def keyfiles(s: Sidecar):
    d = s.dir / ".state" / "keys"
    files = {p.name: p for p in d.iterdir()}
    fleet_priv = next(p for n, p in files.items() if n.startswith("fleet-") and n.endswith(".key.pem"))
    fleet_pub = next(p for n, p in files.items() if n.startswith("fleet-") and n.endswith(".pub.pem"))
    issuer_priv = next(p for n, p in files.items() if n.startswith("issuer-") and n.endswith(".key.pem"))
    issuer_pub = next(p for n, p in files.items() if n.startswith("issuer-") and n.endswith(".pub.pem"))
    kid = lambda p: p.name.split("-", 1)[1].rsplit(".", 2)[0]
    return {"fleet_priv": fleet_priv, "fleet_pub": fleet_pub, "issuer_priv": issuer_priv, "issuer_pub": issuer_pub,
            "fleet_kid": kid(fleet_pub), "issuer_kid": kid(issuer_pub)}


def claims(agent, **over):
    now = int(time.time())
    c = {"iss": "agent-sidecar", "sub": agent, "aud": "agent-sidecar", "iat": now, "nbf": now, "exp": now + 600,
         "jti": f"tok_py_{os.urandom(6).hex()}", "role": "scraper"}
    c.update(over)
    return c


def mint(k, payload: dict, jws_header=None, jwe_header=None, sign_key=None):
    issuer = sign_key or ECKey.import_key(k["issuer_priv"].read_bytes())
    inner = jws.serialize_compact(jws_header or {"alg": "ES256", "kid": k["issuer_kid"], "typ": "JWT"},
                                  json.dumps(payload).encode(), issuer,
                                  algorithms=[(jws_header or {"alg": "ES256"})["alg"]])
    fleet = RSAKey.import_key(k["fleet_pub"].read_bytes())
    return jwe.encrypt_compact(jwe_header or {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": k["fleet_kid"]},
                               inner, fleet, algorithms=ALGS)


def call(s, token, agent_header=None, url="/serpapi/search?q=x"):
    headers = {"Authorization": f"Bearer {token}"}
    if agent_header:
        headers["X-Agent-Id"] = agent_header
    return requests.get(f"{s.proxy_url}{url}", headers=headers, timeout=10)


@pytest.fixture
def sidecar(sidecar_factory):
    return sidecar_factory(None)


def test_a_token_minted_by_joserfc_is_accepted(sidecar):
    k = keyfiles(sidecar)
    agent = sidecar.new_agent()
    r = call(sidecar, mint(k, claims(agent)))
    assert r.status_code == 200, r.text


def test_a_token_from_the_cli_is_read_by_joserfc(sidecar):
    k = keyfiles(sidecar)
    agent = sidecar.new_agent()
    out = subprocess.run([str(BIN), "token", "issue", "--agent", agent, "--role", "scraper", "--ttl", "5m",
                          "--scope", "serpapi:search", "--keys-dir", str(sidecar.dir / ".state" / "keys")],
                         capture_output=True, text=True, cwd=sidecar.dir)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": k["fleet_kid"]}
    inner = jwe.decrypt_compact(token, RSAKey.import_key(k["fleet_priv"].read_bytes()), algorithms=ALGS).plaintext
    verified = jws.deserialize_compact(inner, ECKey.import_key(k["issuer_pub"].read_bytes()), algorithms=["ES256"])
    payload = json.loads(verified.payload)
    assert payload["sub"] == agent and payload["scopes"] == ["serpapi:search"] and payload["exp"] - payload["iat"] == 300
    assert call(sidecar, token).status_code == 200
    # The CLI enforces the maximum lifetime.
    out = subprocess.run([str(BIN), "token", "issue", "--agent", agent, "--role", "r", "--ttl", "48h",
                          "--keys-dir", str(sidecar.dir / ".state" / "keys")], capture_output=True, text=True)
    assert out.returncode != 0 and "max_ttl" in out.stderr


def flip(token, segment):
    parts = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[segment] + "=" * (-len(parts[segment]) % 4)))
    raw[len(raw) // 2] ^= 1
    parts[segment] = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    return ".".join(parts)


def reencode_header(token):
    parts = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=="))
    parts[0] = base64.urlsafe_b64encode(json.dumps(header, indent=1).encode()).decode().rstrip("=")
    return ".".join(parts)


def hs256_with_public_key(k, payload):
    """The classic algorithm-confusion forgery: HMAC keyed with the issuer's public key."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": k["issuer_kid"]}).encode()).decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    mac = hmac.HMAC(k["issuer_pub"].read_bytes(), hashes.SHA256())
    mac.update(f"{header}.{body}".encode())
    inner = f"{header}.{body}." + base64.urlsafe_b64encode(mac.finalize()).decode().rstrip("=")
    return jwe.encrypt_compact({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": k["fleet_kid"]}, inner,
                               RSAKey.import_key(k["fleet_pub"].read_bytes()), algorithms=ALGS)


def alg_none(k, payload):
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return jwe.encrypt_compact({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": k["fleet_kid"]}, f"{header}.{body}.",
                               RSAKey.import_key(k["fleet_pub"].read_bytes()), algorithms=ALGS)


def rsa1_5(k, payload):
    good = mint(k, payload)
    parts = good.split(".")
    header = {"alg": "RSA1_5", "enc": "A256GCM", "kid": k["fleet_kid"]}
    parts[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
    return ".".join(parts)


def test_forgery_table(sidecar):
    k = keyfiles(sidecar)
    agent = sidecar.new_agent()
    other = sidecar.new_agent()
    good = lambda **o: mint(k, claims(agent, **o))
    revoked_token = sidecar.new_token(agent_id=agent)
    revoked_id = sidecar.admin_request("GET", f"/api/agents/{agent}/tokens").json()["tokens"][-1]["token_id"]
    assert sidecar.admin_request("POST", f"/api/tokens/{revoked_id}/revoke").status_code == 200
    disabled = sidecar.new_agent()
    disabled_token = sidecar.new_token(agent_id=disabled)
    assert sidecar.admin_request("POST", f"/api/agents/{disabled}/disable").status_code == 200
    narrow = sidecar.new_token(agent_id=agent, scopes=["openai:chat"])
    base = good()
    cases = [
        ("tampered ciphertext", flip(base, 3), None, 401, "token_invalid"),
        ("tampered tag", flip(base, 4), None, 401, "token_invalid"),
        ("tampered IV", flip(base, 2), None, 401, "token_invalid"),
        ("tampered encrypted key", flip(base, 1), None, 401, "token_invalid"),
        ("re-encoded header", reencode_header(base), None, 401, "token_invalid"),
        ("alg none", alg_none(k, claims(agent)), None, 401, "token_invalid"),
        ("HS256 signed with the public key", hs256_with_public_key(k, claims(agent)), None, 401, "token_invalid"),
        ("RSA1_5", rsa1_5(k, claims(agent)), None, 401, "token_invalid"),
        ("unknown kid", mint(k, claims(agent), jwe_header={"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "nope"}), None, 401, "token_invalid"),
        ("expired", good(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600), None, 401, "token_expired"),
        ("nbf in the future", good(nbf=int(time.time()) + 3600), None, 401, "token_invalid"),
        ("wrong aud", good(aud="another-fleet"), None, 401, "token_invalid"),
        ("revoked jti", revoked_token, None, 401, "token_revoked"),
        ("disabled agent", disabled_token, None, 401, "agent_disabled"),
        ("agent A's token with X-Agent-Id B", good(), other, 401, "provenance_mismatch"),
        ("bound to another sidecar", good(sidecars=["sidecar-elsewhere"]), None, 401, "provenance_mismatch"),
        ("scopes narrower than the call", narrow, None, 403, "scope_denied"),
        ("not a JWE", "hello.world", None, 401, "token_malformed"),
    ]
    for name, token, agent_header, status, code in cases:
        r = call(sidecar, token, agent_header)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["code"] == code, (name, r.json())
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # The same refusals on the forward proxy are 407 with a Proxy-Authenticate challenge.
    r = requests.get("http://serpapi.com/search?q=x", proxies={"http": sidecar.proxy_url_with(flip(base, 3))}, timeout=10)
    assert r.status_code == 407 and r.headers["Proxy-Authenticate"].startswith("Basic")
    metrics = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    assert 'gateway_security_events_total{kind="forgery"}' in metrics
    assert 'gateway_security_events_total{kind="provenance_mismatch"} 2' in metrics
    assert 'gateway_security_events_total{kind="revoked_use"} 1' in metrics
    assert all(line["status"] < 500 for line in sidecar.logs("access"))


def test_near_expiry_responses_recommend_rotation(sidecar):
    short = sidecar.new_token(ttl="2m")
    r = call(sidecar, short)
    assert r.status_code == 200 and r.headers["X-Token-Rotation-Recommended"] == "true"
    assert r.headers["X-Token-Expires-At"].endswith("Z")
    long = sidecar.new_token(ttl="1h")
    assert "X-Token-Rotation-Recommended" not in call(sidecar, long).headers


def test_agents_and_revocations_survive_a_restart(sidecar_factory, tmp_path):
    state = tmp_path / "state"
    env = {"SIDECAR_STATE_DIR": str(state)}
    s = sidecar_factory(None, env=env)
    agent = s.new_agent(role="scraper", name="persistent")
    token = s.new_token(agent_id=agent)
    assert call(s, token).status_code == 200
    token_id = s.admin_request("GET", f"/api/agents/{agent}/tokens").json()["tokens"][0]["token_id"]
    s.admin_request("POST", f"/api/tokens/{token_id}/revoke")
    admin = (state / "admin.token").read_text().strip()
    assert s.stop() == 0
    s2 = sidecar_factory(None, env=env)
    r = s2.admin_request("GET", f"/api/agents/{agent}", token=admin)
    assert r.status_code == 200 and r.json()["name"] == "persistent"
    assert call(s2, token).json()["code"] == "token_revoked"
    fresh = s2.new_token(agent_id=agent)
    assert call(s2, fresh).status_code == 200


def test_keys_init_writes_private_keys_0600(tmp_path):
    out = subprocess.run([str(BIN), "keys", "init", str(tmp_path / "k")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for p in (tmp_path / "k").iterdir():
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.name.endswith(".key.pem") else 0o644), (p.name, oct(mode))
    assert len(list((tmp_path / "k").iterdir())) == 4


def test_keys_init_on_a_directory_with_keys_is_refused_unless_rotating(tmp_path):
    """A second `keys init` added a pair without a word, and tokens minted there from then on were
    encrypted to a fleet key no sidecar had: every new token refused. It now needs --rotate."""
    k = tmp_path / "k"
    assert subprocess.run([str(BIN), "keys", "init", str(k)], capture_output=True).returncode == 0
    again = subprocess.run([str(BIN), "keys", "init", str(k)], capture_output=True, text=True)
    assert again.returncode != 0 and "--rotate" in again.stderr and len(list(k.iterdir())) == 4
    rotated = subprocess.run([str(BIN), "keys", "init", "--rotate", str(k)], capture_output=True, text=True)
    assert rotated.returncode == 0 and len(list(k.iterdir())) == 8
    for agent in ("", "a b", "x" * 129, "a\nb"):
        out = subprocess.run([str(BIN), "token", "issue", "--keys-dir", str(k), "--agent", agent, "--role", "developer"],
                             capture_output=True, text=True)
        assert out.returncode != 0 and not out.stdout and "--agent" in out.stderr


def test_minting_on_a_sidecar_without_an_issuer_key_is_a_409(sidecar_factory, tmp_path):
    """Asking the wrong sidecar to mint is the operator's mistake, answered 409 `minting_disabled` (it
    was a 503, which told monitoring the sidecar was broken): with authentication off, and on a fleet
    member that holds the issuer's public key only."""
    def refused(s):
        agent = s.new_agent()
        for path, body in ((f"/api/agents/{agent}/tokens", {"ttl": "5m"}), ("/api/generate-token", {"agent_id": agent})):
            r = s.admin_request("POST", path, body)
            assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
            assert r.json()["code"] == "minting_disabled" and "sidecar token issue" in r.json()["detail"]

    refused(sidecar_factory("version: 1\nauth: {required: false}\n"))
    env = {"SIDECAR_STATE_DIR": str(tmp_path / "state")}
    issuer = sidecar_factory(None, env=env)
    assert issuer.stop() == 0
    for key in (tmp_path / "state" / "keys").glob("issuer-*.key.pem"):
        key.unlink()
    member = sidecar_factory(None, env=env)
    refused(member)
    assert not list((tmp_path / "state" / "keys").glob("issuer-*.key.pem"))  # and it did not make a new one
