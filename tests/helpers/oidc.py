"""Start a real OpenID Provider (npm ``oidc-provider`` 9.13.3) for integration tests and get tokens.

Standard library + ``requests`` only.

    prov = start_oidc_provider(tmp_path)                      # plain: issuer http://127.0.0.1:PORT
    kc = start_oidc_provider(tmp_path, style="keycloak")      # issuer http://127.0.0.1:PORT/realms/hpc
    try:
        cc = prov.client_credentials("svc-portal", "svc-portal-secret")["access_token"]
        alice = prov.login_tokens("alice")      # {"access_token": JWT, "id_token": JWT, ...}
    finally:
        prov.stop()

The server (tests/oidc-provider/server.mjs) issues RS256 JWT access tokens whose ``aud`` is the
resource indicator (default ``https://bridge.test``); ID tokens are RS256 too. There is no consent
screen; the devInteractions login form takes any login = account id (= ``sub``), and ignores the
password. An id that is not in ``accounts`` logs in with no claims but ``sub``.

Device flow as a browser test plays it (see also ``device_login`` and server.mjs's header):
  1. ``d = prov.device_authorization()`` (client ``bridge-cli``): device_code, user_code,
     verification_uri (``<issuer>/device``), verification_uri_complete, expires_in (no interval).
  2. open ``d["verification_uri_complete"]``: it auto-submits (JS) hidden ``xsrf`` + ``user_code``.
     (The bare verification_uri shows ``input[name=user_code]`` + button "Continue".)
  3. "Confirm Device" page: click button "Continue" (form ``#op.deviceConfirmForm``).
  4. if the browser has no session at this provider yet, the "Sign-in" page
     (``<issuer>/interaction/<uid>``): fill ``input[name=login]`` with the account id (``alice``)
     and ``input[name=password]`` with anything, click button "Sign-in". No consent page.
  5. ends at ``<issuer>/device/<uid>`` showing "Sign-in Success"; the client then gets tokens
     with ``prov.device_token(d["device_code"])`` (``authorization_pending`` before).

Limits: JWT access tokens always have ``aud`` = a resource, so oidc-provider refuses them at the
userinfo endpoint (401) and at introspection/revocation (structured tokens); refresh tokens can be
introspected and revoked. Browser cookies of this provider are named ``_op_*_<port>``.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from typing import Any

import requests

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER_DIR = REPO_ROOT / "tests" / "oidc-provider"
SERVER_JS = SERVER_DIR / "server.mjs"

DEFAULT_SCOPE = "openid profile email groups"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REDIRECT_URI = "http://127.0.0.1/cb"

DEFAULT_ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {
        "preferred_username": "alice",
        "name": "Alice Liddell",
        "email": "alice@example.org",
        "email_verified": True,
        "groups": ["hpc-users"],
        "realm_roles": ["hpc-user"],
    },
    "bob": {
        "preferred_username": "bob",
        "name": "Bob Builder",
        "email": "bob@example.org",
        "email_verified": True,
        "groups": ["hpc-users", "hpc-admins"],
        "realm_roles": ["hpc-user", "hpc-admin"],
    },
    "carol": {
        "preferred_username": "carol",
        "name": "Carol Nogroups",
        "email": "carol@example.org",
        "email_verified": True,
    },
    "mallory": {
        "preferred_username": "root",
        "name": "Mallory Root",
        "email": "mallory@example.org",
        "email_verified": True,
        "groups": ["hpc-users"],
    },
    "eve": {
        "preferred_username": "Eve@LAB.example.org",
        "name": "Eve Mixedcase",
        "email": "Eve@LAB.example.org",
        "email_verified": True,
        "groups": ["hpc-users"],
    },
}


def _cc_client(client_id: str, secret: str) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": secret,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "token_endpoint_auth_method": "client_secret_basic",
    }


DEFAULT_CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "bridge-test",
        "client_secret": "bridge-test-secret",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": ["http://127.0.0.1/logged-out"],
        "token_endpoint_auth_method": "client_secret_basic",
    },
    {
        "client_id": "bridge-cli",
        "token_endpoint_auth_method": "none",
        "grant_types": [DEVICE_GRANT, "refresh_token", "authorization_code"],
        "response_types": ["code"],
        "redirect_uris": [REDIRECT_URI],
        # oidc-provider: a public client with a http://127.0.0.1 redirect is a "native" app
        "application_type": "native",
    },
    _cc_client("svc-portal", "svc-portal-secret"),
    _cc_client("svc-batch", "svc-batch-secret"),
    _cc_client("svc-unknown", "svc-unknown-secret"),
]


class OidcError(RuntimeError):
    """A flow step against the provider failed (message carries status and body)."""


class _FormParser(html.parser.HTMLParser):
    """Collects <form> elements with their action, id and input name/value pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._cur: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._cur = {
                "action": a.get("action", ""),
                "id": a.get("id", ""),
                "method": a.get("method", "get").lower(),
                "inputs": {},
            }
            self.forms.append(self._cur)
        elif tag == "input" and a.get("name"):
            # inputs may sit inside the form (most) - buttons may reference it by form=
            target = self._cur
            if a.get("form"):
                target = next((f for f in self.forms if f["id"] == a["form"]), target)
            if target is not None:
                target["inputs"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._cur = None


def _forms(text: str) -> list[dict[str, Any]]:
    p = _FormParser()
    p.feed(text)
    return p.forms


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge


def _fail(step: str, r: requests.Response) -> OidcError:
    body = r.text
    if len(body) > 2000:
        body = body[:2000] + "..."
    return OidcError(
        f"{step}: HTTP {r.status_code} {r.request.method} {r.url.split('?')[0]}: {body}"
    )


class OidcProvider:
    """A running ``tests/oidc-provider/server.mjs`` (one node process)."""

    issuer: str
    port: int
    resource: str
    config: dict
    base_url: str

    def __init__(
        self,
        proc: subprocess.Popen,
        config: dict,
        config_path: pathlib.Path,
        log_path: pathlib.Path,
        log_lines: list[str],
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.config = config
        self.config_path = config_path
        self.log_path = log_path
        self._log_lines = log_lines
        self.issuer = config["issuer"]
        self.port = int(config["port"])
        self.resource = config["resource"]
        self.style = config["style"]
        self.base_url = f"http://{config['host']}:{self.port}"
        self._discovery: dict | None = None

    # ------------------------------------------------------------------ basics
    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self._log_lines[-n:])

    @property
    def lines(self) -> list[str]:
        """The provider's log so far, one "METHOD PATH STATUS MS" line per request."""
        return list(self._log_lines)

    def discovery(self) -> dict:
        r = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=10)
        if r.status_code != 200:
            raise _fail("discovery", r)
        self._discovery = r.json()
        return self._discovery

    def endpoint(self, name: str) -> str:
        """e.g. endpoint("token_endpoint"), endpoint("jwks_uri")."""
        if self._discovery is None:
            self.discovery()
        assert self._discovery is not None
        return self._discovery[name]

    def jwks(self) -> dict:
        r = requests.get(self.endpoint("jwks_uri"), timeout=10)
        if r.status_code != 200:
            raise _fail("jwks", r)
        return r.json()

    def client(self, client_id: str) -> dict:
        for c in self.config["clients"]:
            if c["client_id"] == client_id:
                return c
        raise KeyError(f"client {client_id!r} is not configured")

    def _client_auth(self, client_id: str, data: dict) -> tuple[dict, tuple[str, str] | None]:
        """Returns (form data, basic auth) for the client's token_endpoint_auth_method."""
        c = self.client(client_id)
        method = c.get("token_endpoint_auth_method", "client_secret_basic")
        data = dict(data)
        if method == "none":
            data["client_id"] = client_id
            return data, None
        if method == "client_secret_post":
            data["client_id"] = client_id
            data["client_secret"] = c["client_secret"]
            return data, None
        # client_secret_basic: RFC 6749 2.3.1 form-encodes id and secret
        return data, (
            urllib.parse.quote(client_id, safe=""),
            urllib.parse.quote(c["client_secret"], safe=""),
        )

    def token_request(self, client_id: str, data: dict) -> dict:
        """POST the token endpoint authenticated as a configured client; returns the JSON answer."""
        data, auth = self._client_auth(client_id, data)
        r = requests.post(self.endpoint("token_endpoint"), data=data, auth=auth, timeout=10)
        if r.status_code != 200:
            raise _fail(f"token ({data.get('grant_type')})", r)
        return r.json()

    # ------------------------------------------------------------------ grants
    def client_credentials(
        self,
        client_id: str,
        client_secret: str,
        resource: str | None = None,
        scope: str | None = None,
    ) -> dict:
        data: dict[str, str] = {"grant_type": "client_credentials"}
        if resource:
            data["resource"] = resource
        if scope:
            data["scope"] = scope
        r = requests.post(
            self.endpoint("token_endpoint"), data=data, auth=(client_id, client_secret), timeout=10
        )
        if r.status_code != 200:
            raise _fail("client_credentials", r)
        return r.json()

    def login_tokens(
        self,
        username: str,
        client_id: str = "bridge-test",
        resource: str | None = None,
        scope: str = DEFAULT_SCOPE,
        redirect_uri: str | None = None,
    ) -> dict:
        """Authorization code + PKCE (S256) over plain HTTP; returns the token response.

        The code is read from the Location header aimed at the client's redirect_uri, so nothing
        has to listen there. The answer also carries ``_nonce`` (the nonce sent, for ID token
        checks); drop it before handing the dict on if that matters.
        """
        c = self.client(client_id)
        redirect_uri = redirect_uri or c["redirect_uris"][0]
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(16)
        nonce = secrets.token_urlsafe(16)
        params = {
            "client_id": client_id,
            "response_type": "code",
            "scope": scope,
            "redirect_uri": redirect_uri,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if resource:
            params["resource"] = resource
        s = requests.Session()
        url = self.endpoint("authorization_endpoint") + "?" + urllib.parse.urlencode(params)
        r = s.get(url, allow_redirects=False, timeout=10)
        location = self._drive_interactions(s, r, username, stop_prefix=redirect_uri)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if "error" in q:
            raise OidcError(f"authorization failed: {q}")
        if q.get("state") != state:
            raise OidcError(f"state mismatch in redirect {q.get('state')!r}")
        if q.get("iss") and q["iss"] != self.issuer:
            raise OidcError(f"iss mismatch in redirect {q.get('iss')!r}")
        data = {
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        if resource:
            data["resource"] = resource
        tokens = self.token_request(client_id, data)
        tokens["_nonce"] = nonce
        return tokens

    def refresh(
        self,
        client_id: str,
        refresh_token: str,
        resource: str | None = None,
        scope: str | None = None,
    ) -> dict:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if resource:
            data["resource"] = resource
        if scope:
            data["scope"] = scope
        return self.token_request(client_id, data)

    # ------------------------------------------------------------------ device flow
    def device_authorization(
        self, client_id: str = "bridge-cli", scope: str = DEFAULT_SCOPE, resource: str | None = None
    ) -> dict:
        data, auth = self._client_auth(client_id, {"scope": scope})
        if resource:
            data["resource"] = resource
        r = requests.post(
            self.endpoint("device_authorization_endpoint"), data=data, auth=auth, timeout=10
        )
        if r.status_code != 200:
            raise _fail("device_authorization", r)
        return r.json()

    def device_login(self, user_code: str, username: str, confirm: bool = True) -> str:
        """Plays the user of the device flow over plain HTTP; returns the final page's HTML."""
        s = requests.Session()
        vuri = self.issuer + "/device"  # verification_uri (route code_verification) in both styles
        r = s.get(vuri, params={"user_code": user_code}, allow_redirects=False, timeout=10)
        if r.status_code != 200:
            raise _fail("device: open verification_uri_complete", r)
        f = _forms(r.text)[0]  # auto-submitting form: xsrf + user_code
        r = s.post(f["action"], data=f["inputs"], allow_redirects=False, timeout=10)
        if r.status_code != 200:
            raise _fail("device: submit user_code", r)
        forms = [x for x in _forms(r.text) if x["id"] == "op.deviceConfirmForm"]
        if not forms:
            raise _fail("device: no confirm form", r)
        data = dict(forms[0]["inputs"])
        if not confirm:
            data.pop("confirm", None)
            data["abort"] = "yes"
        r = s.post(forms[0]["action"], data=data, allow_redirects=False, timeout=10)
        if not confirm:
            return r.text
        self._drive_interactions(s, r, username, stop_prefix=None)
        return self._last_page

    def device_token(self, device_code: str, client_id: str = "bridge-cli") -> dict:
        return self.token_request(
            client_id, {"grant_type": DEVICE_GRANT, "device_code": device_code}
        )

    def device_tokens(
        self,
        username: str,
        client_id: str = "bridge-cli",
        scope: str = DEFAULT_SCOPE,
        resource: str | None = None,
    ) -> dict:
        d = self.device_authorization(client_id, scope=scope, resource=resource)
        self.device_login(d["user_code"], username)
        return self.device_token(d["device_code"], client_id=client_id)

    # ------------------------------------------------------------------ internals
    def _drive_interactions(
        self, s: requests.Session, r: requests.Response, username: str, stop_prefix: str | None
    ) -> str:
        """Follows redirects by hand, fills login (and consent if any) forms.

        With stop_prefix: returns the Location that starts with it (the client callback).
        Without: stops at the first 200 page that is no interaction form (device "success").
        """
        self._last_page = ""
        for _ in range(20):
            if r.status_code in (301, 302, 303, 307, 308):
                loc = urllib.parse.urljoin(r.url, r.headers["Location"])
                if stop_prefix and loc.startswith(stop_prefix):
                    return loc
                r = s.get(loc, allow_redirects=False, timeout=10)
                continue
            if r.status_code != 200:
                raise _fail("interaction", r)
            forms = _forms(r.text)
            prompt = next(
                (f for f in forms if f["inputs"].get("prompt") in ("login", "consent")), None
            )
            if prompt is None:
                if stop_prefix:
                    # form_post or an error page
                    raise _fail("interaction: unexpected page", r)
                self._last_page = r.text
                return r.url
            data = dict(prompt["inputs"])
            if data["prompt"] == "login":
                data.update({"login": username, "password": "x"})
            action = urllib.parse.urljoin(r.url, prompt["action"])
            r = s.post(action, data=data, allow_redirects=False, timeout=10)
        raise OidcError("too many redirects/interactions")

    def stop(self) -> None:
        """Terminates the node process this helper started (by pid)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass


def _ensure_node_modules() -> None:
    if (SERVER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    r = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise OidcError(f"npm ci failed in {SERVER_DIR}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def start_oidc_provider(
    workdir: pathlib.Path,
    style: str = "plain",
    realm: str = "hpc",
    accounts: dict | None = None,
    clients: list | None = None,
    resource: str = "https://bridge.test",
    ttl: dict | None = None,
    timeout: float = 30.0,
    device_flow: bool = True,
) -> OidcProvider:
    """Starts the provider on a free 127.0.0.1 port and waits for its READY line.

    ``clients`` are added to the default clients (an entry with the client_id of a default
    client replaces it). ``accounts`` replaces the default accounts when given.
    """
    if style not in ("plain", "keycloak"):
        raise ValueError(f"style must be 'plain' or 'keycloak', not {style!r}")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _ensure_node_modules()

    merged: dict[str, dict] = {c["client_id"]: c for c in DEFAULT_CLIENTS}
    for c in clients or []:
        merged[c["client_id"]] = c
    port = _free_port()
    host = "127.0.0.1"
    issuer = f"http://{host}:{port}" + (f"/realms/{realm}" if style == "keycloak" else "")
    config = {
        "port": port,
        "host": host,
        "issuer": issuer,
        "style": style,
        "realm": realm,
        "clients": list(merged.values()),
        "accounts": accounts if accounts is not None else DEFAULT_ACCOUNTS,
        "resource": resource,
        "ttl": ttl or {},
        # False: discovery has no device_authorization_endpoint (as Amazon Cognito)
        "deviceFlow": device_flow,
    }
    cfg_path = workdir / f"oidc-provider-{style}-{port}.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / f"oidc-provider-{style}-{port}.log"

    proc = subprocess.Popen(
        ["node", str(SERVER_JS), str(cfg_path)],
        cwd=SERVER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "a", encoding="utf-8") as log:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                if line.startswith("READY "):
                    ready.set()

    threading.Thread(target=pump, name=f"oidc-provider-{port}", daemon=True).start()
    prov = OidcProvider(proc, config, cfg_path, log_path, lines)
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            prov.stop()
            time.sleep(0.1)
            raise OidcError(
                f"oidc-provider did not become ready (exit={proc.poll()}); log tail:\n"
                + "\n".join(lines[-40:])
            )
    return prov
