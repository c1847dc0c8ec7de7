"""``slurm-jwt-bridge keycloak setup``: register the bridge's clients in a Keycloak realm.

Built on python-keycloak's admin API. It plans first and changes nothing when any existing object
differs from what the bridge needs (a conflict is reported, never overwritten); otherwise it
creates what is missing and prints the bridge.toml blocks. Run twice, the second run finds
everything in place and says so. The admin password or secret is read from a file and never
printed or logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .outbound import TrustError, http_client, lock_down, requests_verify
from .untrusted import insecure_url, printable

AUDIENCE_MAPPER = "oidc-audience-mapper"
DEVICE_GRANT_ATTR = "oauth2.device.authorization.grant.enabled"


class SetupError(Exception):
    """The setup cannot go on; one line saying why (never a password or secret)."""


@dataclass(frozen=True)
class SetupOptions:
    server: str
    realm: str
    public_url: str
    client_id: str = "slurm-jwt-bridge"
    cli_client_id: str = "slurm-jwt-bridge-cli"
    issuer_name: str = "keycloak"
    service_accounts: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False
    ca_file: str | None = None  # the CA that Keycloak's https certificate is from

    @property
    def scope_name(self) -> str:
        return f"{self.client_id}-audience"

    @property
    def callback(self) -> str:
        return self.public_url.rstrip("/") + "/auth/callback"

    @property
    def post_logout(self) -> str:
        return self.public_url.rstrip("/") + "/"


@dataclass
class Plan:
    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    # client ids and the scope name -> Keycloak's internal ids (filled as objects are created)
    state: dict[str, str] = field(default_factory=dict)


def parse_service_account(value: str) -> tuple[str, str]:
    """``NAME=ACCOUNT``: a Keycloak client id and the cluster account its tokens are for."""
    name, sep, account = value.partition("=")
    if not sep or not name.strip() or not account.strip():
        raise SetupError(f"--service-account must be NAME=ACCOUNT, got {value!r}")
    return name.strip(), account.strip()


def desired_clients(o: SetupOptions) -> dict[str, dict[str, Any]]:
    """The client representations the bridge needs, by client id."""
    off = {"implicitFlowEnabled": False, "directAccessGrantsEnabled": False}
    clients: dict[str, dict[str, Any]] = {
        o.client_id: {
            "clientId": o.client_id,
            "name": "Slurm JWT bridge (browser login)",
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "standardFlowEnabled": True,
            "serviceAccountsEnabled": False,
            **off,
            "redirectUris": [o.callback],
            "attributes": {
                "pkce.code.challenge.method": "S256",
                "post.logout.redirect.uris": o.post_logout,
            },
        },
        o.cli_client_id: {
            "clientId": o.cli_client_id,
            "name": "slurm-jwt-bridge login (device grant)",
            "protocol": "openid-connect",
            "publicClient": True,
            "standardFlowEnabled": False,
            "serviceAccountsEnabled": False,
            **off,
            "redirectUris": [],
            "attributes": {DEVICE_GRANT_ATTR: "true"},
        },
    }
    for name, _account in o.service_accounts:
        clients[name] = {
            "clientId": name,
            "name": f"{name} (service account for slurm-jwt-bridge)",
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "standardFlowEnabled": False,
            "serviceAccountsEnabled": True,
            **off,
            "redirectUris": [],
            "attributes": {},
        }
    return clients


def audience_mapper(o: SetupOptions) -> dict[str, Any]:
    return {
        "name": f"{o.client_id} audience",
        "protocol": "openid-connect",
        "protocolMapper": AUDIENCE_MAPPER,
        "config": {
            "included.client.audience": o.client_id,
            "access.token.claim": "true",
            "id.token.claim": "false",
            "introspection.token.claim": "true",
        },
    }


def _differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """Managed fields of ``want`` that ``have`` holds differently (the name is not managed)."""
    diffs = []
    for key, value in want.items():
        if key in ("name", "clientId"):
            continue
        if key == "attributes":
            attrs = have.get("attributes") or {}
            for a, v in value.items():
                if attrs.get(a, "") != v:
                    diffs.append(f"attribute {a}={attrs.get(a, '')!r} (needs {v!r})")
        elif key == "redirectUris":
            if sorted(have.get(key) or []) != sorted(value):
                diffs.append(f"{key}={have.get(key) or []} (needs {value})")
        elif have.get(key, False) != value:
            diffs.append(f"{key}={have.get(key)!r} (needs {value!r})")
    return diffs


def _mapper_matches(mapper: dict[str, Any], want: dict[str, Any]) -> bool:
    cfg = mapper.get("config") or {}
    return mapper.get("protocolMapper") == AUDIENCE_MAPPER and all(
        cfg.get(k) == v
        for k, v in want["config"].items()
        if k in ("included.client.audience", "access.token.claim")
    )


def plan(admin: Any, o: SetupOptions) -> Plan:
    """What to create (with the calls that do it), what is in place, what conflicts."""
    p = Plan()
    scopes = {s.get("name"): s for s in admin.get_client_scopes()}
    scope = scopes.get(o.scope_name)
    state = p.state
    mapper = audience_mapper(o)
    if scope is None:

        def create_scope() -> None:
            state["scope"] = admin.create_client_scope(
                {
                    "name": o.scope_name,
                    "protocol": "openid-connect",
                    "description": f"access tokens for {o.client_id}",
                    "attributes": {
                        "include.in.token.scope": "true",
                        "display.on.consent.screen": "false",
                    },
                }
            )
            admin.add_mapper_to_client_scope(state["scope"], mapper)

        p.actions.append(
            (
                f"create client scope {o.scope_name} with an audience mapper for {o.client_id}",
                create_scope,
            )
        )
    else:
        state["scope"] = scope["id"]
        mappers = admin.get_mappers_from_client_scope(scope["id"])
        if any(_mapper_matches(m, mapper) for m in mappers):
            p.unchanged.append(f"client scope {o.scope_name}")
        else:
            p.conflicts.append(
                f"client scope {o.scope_name} exists without an audience mapper for "
                f"{o.client_id} (access tokens would not carry the bridge's audience)"
            )

    for client_id, want in desired_clients(o).items():
        internal = admin.get_client_id(client_id)
        if internal is None:

            def create(want: dict[str, Any] = want, client_id: str = client_id) -> None:
                internal = admin.create_client(want)
                admin.add_client_default_client_scope(internal, state["scope"], {})
                state[client_id] = internal

            kind = "client" if client_id != o.client_id else "browser client"
            p.actions.append((f"create {kind} {client_id}", create))
            continue
        state[client_id] = internal
        diffs = _differences(want, admin.get_client(internal))
        if diffs:
            p.conflicts.append(f"client {client_id} exists with " + "; ".join(diffs))
            continue
        defaults = {s.get("name") for s in admin.get_client_default_client_scopes(internal)}
        if o.scope_name in defaults:
            p.unchanged.append(f"client {client_id}")
        else:

            def add_scope(internal: str = internal) -> None:
                admin.add_client_default_client_scope(internal, state["scope"], {})

            p.actions.append((f"add default client scope {o.scope_name} to {client_id}", add_scope))
    return p


def _toml(value: str | list[str]) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def config_blocks(o: SetupOptions, issuer: str, client_secret: str) -> str:
    """The [[issuers]], [cli_login] and [[service_accounts]] blocks for bridge.toml."""
    scopes = ["openid", "profile", "email"]
    lines = [
        "[[issuers]]",
        f"name = {_toml(o.issuer_name)}",
        'kind = "keycloak"',
        f"issuer = {_toml(issuer)}",
        f"audiences = {_toml([o.client_id])}",
        'token_use = ["access", "id"]',
        f"client_id = {_toml(o.client_id)}",
        f"client_secret = {_toml(client_secret)}",
        f"scopes = {_toml(scopes)}",
    ]
    if o.ca_file:
        lines.append(f"ca_file = {_toml(os.path.abspath(o.ca_file))}")
    lines += [
        "",
        "[cli_login]",
        f"issuer = {_toml(o.issuer_name)}",
        f"client_id = {_toml(o.cli_client_id)}",
        f"scopes = {_toml(scopes)}",
    ]
    for name, account in o.service_accounts:
        lines += [
            "",
            "[[service_accounts]]",
            f"issuer = {_toml(o.issuer_name)}",
            f"client_id = {_toml(name)}",
            f"account = {_toml(account)}",
        ]
    return "\n".join(lines) + "\n"


def realm_issuer(server: str, realm: str, timeout: float = 10.0, ca_file: str | None = None) -> str:
    """The realm's ``issuer`` as Keycloak publishes it (its hostname settings decide it)."""
    import httpx

    url = f"{server.rstrip('/')}/realms/{realm}/.well-known/openid-configuration"
    try:
        with http_client(ca_file, timeout=timeout) as client:
            r = client.get(url)
    except TrustError as exc:
        raise SetupError(f"--ca-file {exc}") from None
    except httpx.HTTPError as exc:
        raise SetupError(f"cannot reach {url}: {type(exc).__name__}") from None
    if r.status_code != 200:
        raise SetupError(f"{url}: HTTP {r.status_code} (does realm {realm!r} exist?)")
    try:
        issuer = r.json()["issuer"]
    except (ValueError, KeyError, TypeError):
        raise SetupError(f"{url}: not an OpenID discovery document") from None
    return str(issuer)


def server_url_problem(server: str) -> str | None:
    """One line when ``--server`` is not https (or plain http to this machine): the admin
    password or client secret travels there, as ``login`` sends tokens only that way."""
    if not server.lower().startswith(("https://", "http://")):
        return f"--server must be an http(s) URL, got {server[:200]!r}"
    if insecure_url(server):
        return (
            "--server must be https:// (plain http only to this machine): the admin password "
            f"or secret would cross the network in clear text, got {printable(server, 100)}"
        )
    return None


def connect(
    server: str,
    realm: str,
    *,
    admin_realm: str,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    timeout: int = 30,
    ca_file: str | None = None,
) -> Any:
    """python-keycloak's admin client working on ``realm``, signed in at ``admin_realm``."""
    from keycloak import KeycloakAdmin
    from keycloak.exceptions import KeycloakConnectionError, KeycloakError

    problem = server_url_problem(server)
    if problem:
        raise SetupError(problem)
    kwargs: dict[str, Any] = {
        "server_url": server.rstrip("/") + "/",
        "realm_name": realm,
        "user_realm_name": admin_realm,
        "timeout": timeout,
    }
    try:
        kwargs["verify"] = requests_verify(ca_file)
    except TrustError as exc:
        raise SetupError(f"--ca-file {exc}") from None
    if username:
        kwargs.update(username=username, password=password)
    else:
        kwargs.update(client_id=client_id, client_secret_key=client_secret)
    who = f"user {username!r}" if username else f"client {client_id!r}"
    try:
        admin = KeycloakAdmin(**kwargs)
        # Both of python-keycloak's sessions (the admin API's and the sign-in's): no redirect
        # followed, so the password or secret is never sent again wherever a 3xx points.
        lock_down(admin.connection._s, ca_file)
        lock_down(admin.connection.keycloak_openid.connection._s, ca_file)
        admin.connection.get_token()
    except KeycloakConnectionError:
        raise SetupError(f"cannot reach {server}") from None
    except KeycloakError as exc:
        code = getattr(exc, "response_code", None)
        raise SetupError(
            f"sign-in as {who} at realm {admin_realm!r} refused (HTTP {code})"
        ) from None
    try:
        admin.get_realm(realm)
    except KeycloakError as exc:
        code = getattr(exc, "response_code", None)
        reason = {404: "no such realm", 403: "not allowed to administer it"}.get(code or 0, "")
        raise SetupError(f"realm {realm!r} as {who}: HTTP {code} {reason}".rstrip()) from None
    return admin


def run_setup(admin: Any, o: SetupOptions, say: Callable[[str], None]) -> tuple[int, str]:
    """Plan and (unless a dry run or a conflict) apply; returns (exit code, config blocks)."""
    from keycloak.exceptions import KeycloakError

    p = plan(admin, o)
    for name in p.unchanged:
        say(f"in place: {name}")
    if p.conflicts:
        for c in p.conflicts:
            say(f"conflict: {c}; not changed")
        say("nothing was changed: resolve the conflicts above (or choose other client ids)")
        return 1, ""
    if not p.actions:
        say("nothing to change: the realm already has everything the bridge needs")
    for what, do in p.actions:
        if o.dry_run:
            say(f"would {what}")
            continue
        try:
            do()
        except KeycloakError as exc:
            code = getattr(exc, "response_code", None)
            raise SetupError(f"{what}: HTTP {code}") from None
        say(f"{what}: done")
    state = p.state
    if o.client_id in state:
        secret = admin.get_client_secrets(state[o.client_id]).get("value", "")
    else:
        secret = f"<the secret of client {o.client_id}, created by a run without --dry-run>"
    issuer = realm_issuer(o.server, o.realm, ca_file=o.ca_file)
    return 0, config_blocks(o, issuer, secret)
