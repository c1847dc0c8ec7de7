"""The service configuration: one TOML file, validated at start.

Each setting is declared once, below, as a dataclass field: its default, its bounds and checks,
and the line that documents it (``setting(...)``, config_fields.py). One reader walks the
declarations to load a file, ``json_schema()`` walks them to describe it, and
docs/configuration.md's tables are generated from that schema (scripts/gen-config-docs.py).

Every error is one line that names the key that is wrong, e.g.
``tokens.max_lifetime: must be an integer, got 'soon'``; a file with several mistakes gets one
line for each.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config_fields import (
    NO_DEFAULT,
    Check,
    Context,
    Invalid,
    Reader,
    SettingsError,
    object_schema,
    setting,
    show,
)
from .names import (
    COGNITO,
    ENTRA,
    ISSUER_KINDS,
    KEYCLOAK,
    KEYCLOAK_ISSUER_RE,
    OIDC,
    RS256,
    SIGNING_ALGS,
    username_problem,
)
from .outbound import TrustError, trust
from .untrusted import insecure_url

log = logging.getLogger(__name__)

# Clients of every Keycloak realm that hold client roles: its "Audience Resolve" mapper (default
# client scope "roles") puts them in the aud of access tokens issued to ANY client of the realm
# ("account" for every user by default, "realm-management" for administrators, "broker" for
# holders of read-token). None of them says a token was meant for the bridge.
KEYCLOAK_REALM_AUDIENCES = ("account", "broker", "realm-management")

CONFIG_ENV = "SLURM_JWT_BRIDGE_CONFIG"
KEYS_DIR_ENV = "SLURM_JWT_BRIDGE_KEYS_DIR"
# Set by gunicorn_conf.py to its worker count: in-memory rate limits take 1/N each.
WORKERS_ENV = "SLURM_JWT_BRIDGE_WORKERS"

TENANT_PLACEHOLDER = "{tenantid}"
# Claims that name an Entra user without its tenant: alice@evil.onmicrosoft.com's local part
# is anybody's, and an unverified email or display name is whatever the tenant's admin typed.
TENANTLESS_CLAIMS = ("upn", "preferred_username", "email", "unique_name", "name")
TOKEN_USES = ("access", "id")
IDENTITY_SOURCES = ("nss", "claims")
AUTH_REQUEST_ALLOW_FROM = ("127.0.0.0/8", "::1/128")
LOGIN_SCOPES = ("openid", "profile", "email")
# ---------------------------------------------------------------- field checks


def _path(base: Path, value: str) -> str:
    """A path from the file, taken from the file's own directory when relative."""
    return value if not value or os.path.isabs(value) else str(base / value)


def _relative(value: str, ctx: Context) -> str:
    return _path(ctx.base, value)


def _ca_file(value: str, ctx: Context) -> str:
    """A CA file, relative to the config file, that loads as PEM CA certificates."""
    path = _path(ctx.base, value)
    if path:
        try:
            trust(path)
        except TrustError as exc:
            raise Invalid(str(exc)) from None
    return path


def _rstrip_slash(value: str, ctx: Context) -> str:
    return value.rstrip("/")


def _username(value: str, ctx: Context) -> str:
    """A cluster user name, by the policy's own rule (a name it refuses would fail every mint)."""
    problem = username_problem(value)
    if problem:
        raise Invalid(problem)
    return value


def _usernames(values: tuple[str, ...], ctx: Context) -> tuple[str, ...]:
    return tuple(_username(v, ctx) for v in values)


def _url(value: str, ctx: Context) -> str:
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise Invalid(f"must be an http(s) URL, got {show(value)}")
    return value


def _regex(value: str, ctx: Context) -> str:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise Invalid(f"invalid regular expression: {exc}") from None
    return value


def _user_regex(value: str, ctx: Context) -> str:
    if value and "user" not in re.compile(_regex(value, ctx)).groupindex:
        raise Invalid("needs a named group (?P<user>...)")
    return value


def _issuer_ref(value: str, ctx: Context) -> str:
    if value not in ctx.issuer_names:
        raise Invalid(f"no [[issuers]] entry is named {value!r}")
    return value


def _issuer_ref_or_any(value: str, ctx: Context) -> str:
    return value if value == "*" else _issuer_ref(value, ctx)


def _all_in(allowed: tuple[str, ...], what: str) -> Check:
    def check(values: tuple[str, ...], ctx: Context) -> tuple[str, ...]:
        for value in values:
            if value not in allowed:
                raise Invalid(f"must hold {what}, got {value!r}")
        return values

    return check


def _networks(normalise: bool, noun: str) -> Check:
    """A list of IP addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``::1``)."""

    def check(values: tuple[str, ...], ctx: Context) -> tuple[str, ...]:
        out = []
        for value in values:
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise Invalid(f"{show(value)} is not {noun}") from None
            out.append(str(net) if normalise else value)
        return tuple(out)

    return check


def _rsa_bits(value: int, ctx: Context) -> int:
    if value not in (2048, 3072, 4096):
        raise Invalid(f"must be 2048, 3072 or 4096, got {value}")
    return value


def _audit_destination(value: str, ctx: Context) -> str:
    if value not in ("stdout", "stderr", "none") and not value.startswith("file:"):
        raise Invalid(f"must be stdout, stderr, none or file:/path, got {show(value)}")
    if value.startswith("file:") and not value[5:].strip():
        raise Invalid(
            "file: needs the audit file's path (file:/var/log/slurm-jwt-bridge/audit.log)"
        )
    return "file:" + _path(ctx.base, value[5:]) if value.startswith("file:") else value


def _argv(value: Any, ctx: Context) -> tuple[str, ...]:
    if isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        return tuple(value)
    raise Invalid("must be a non-empty list of strings (argv)")


def _service_tokens(rule: str, ctx: Context) -> str:
    name, eq, value = rule.removeprefix("claim:").partition("=")
    if rule in ("sub_is_client", "none") or (rule.startswith("claim:") and name and eq and value):
        return rule
    raise Invalid(f'must be "sub_is_client", "none" or "claim:NAME=VALUE", got {show(rule)}')


def _session_dir(value: str, ctx: Context) -> str:
    if not value:  # systemd's StateDirectory= when there is one, else beside the config file
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        value = str(Path(state) / "sessions") if state else "sessions"
    return _path(ctx.base, value)


def _api_version(value: str, ctx: Context) -> str:
    if not re.fullmatch(r"v\d+\.\d+\.\d+", value):
        raise Invalid(f"must look like v0.0.44, got {show(value)}")
    return value


def _session_storage(value: str, ctx: Context) -> str:
    if value and not re.match(r"^(redis|rediss|redis\+unix)://", value):
        raise Invalid(
            f"must be empty (the local session_dir) or redis://host:port, got {show(value)}"
        )
    return value


def _slurmrestd(value: str, ctx: Context) -> str:
    if value and not (
        re.fullmatch(r"https?://[^\s/]+/?", value) or re.fullmatch(r"unix:/\S+", value)
    ):
        raise Invalid(f"must be http://host:port or unix:/path, got {show(value)}")
    if value.startswith("http"):
        from urllib3.exceptions import LocationParseError
        from urllib3.util import parse_url

        try:  # what the proxy's connection pool parses (slurmrest.py)
            host = parse_url(value).host
        except LocationParseError:
            host = None
        if not host:
            raise Invalid(
                f"not a valid host or port (1-65535) in http://host:port, got {show(value)}"
            )
    return value.rstrip("/")


def _rate(value: str, ctx: Context) -> str:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise Invalid(f'not a rate limit like "60/minute", got {show(value)}') from None
    return value


# The module each storage_uri scheme needs, and how to install it.
_REDIS = ("redis", "pip install 'slurm-jwt-bridge[redis]'")
STORAGE_MODULES = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "redis+unix": _REDIS,
    "memcached": ("pymemcache", "pip install pymemcache"),
}


def _limiter_storage(value: str, ctx: Context) -> str:
    import importlib.util

    if not re.match(r"^(memory|redis|rediss|redis\+unix|memcached)://", value):
        raise Invalid(f"must be memory:// or redis://host:port, got {show(value)}")
    module, install = STORAGE_MODULES.get(value.partition("://")[0], ("", ""))
    if module and importlib.util.find_spec(module) is None:
        raise Invalid(f"{value.partition('://')[0]}:// needs the {module} module ({install})")
    return value


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", "address of the development server (`serve`)")
    port: int = setting(8000, "its port", ge=0, le=65535)
    public_url: str = setting(
        "",
        "the URL users reach the service at: the identity provider's redirect URIs, the device "
        "page's address and the terminal's endpoints are built from it, never from the "
        "request's `Host`/`X-Forwarded-Host`. Required for browser login under gunicorn "
        "(`serve --prod`) and by `config check`: without it they stop with one line. The "
        "development server (`serve`) uses the request's `Host` when it is empty",
        check=_rstrip_slash,
    )
    secret_key_file: str = setting(
        "",
        "file holding the browser session key (default `<keys dir>/session.key`; created 0600 "
        "with 32 random bytes when missing; the service refuses to start when group/other can "
        "read it or it is shorter than 32 bytes)",
        check=_relative,
    )
    proxy_fix: int = setting(
        0,
        "number of trusted reverse proxies in front: the client address from `X-Forwarded-For` "
        "and the scheme from `X-Forwarded-Proto`, that many hops from the right. "
        "`X-Forwarded-Host`, `-Port` and `-Prefix` are never trusted "
        "([deploy.md](deploy.md#forwarded-headers))",
        ge=0,
    )
    # Client networks that get /metrics and /readyz's details (everyone else: 403, yes/no).
    internal_allow: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        "client addresses/networks that may read `/metrics` and `/readyz`'s details; everyone "
        'else gets 403 and a bare `{"ready": ...}`',
        check=_networks(normalise=False, noun="an address or network"),
    )


@dataclass(frozen=True)
class KeySettings:
    dir: Path = setting(
        Path("keys"),
        "the keys directory (`--keys-dir` overrides it)",
        check=_relative,
        absent="keys",
    )
    default_alg: str = setting(
        RS256,
        "`RS256` (preferred: public JWKS, rotation) or `HS256` (Slurm's shared `jwt_key`)",
        choices=SIGNING_ALGS,
    )
    rsa_bits: int = setting(
        2048,
        "size of new RSA keys: 2048, 3072 or 4096",
        choices=(2048, 3072, 4096),
        check=_rsa_bits,
    )
    retire_margin: int = setting(
        300, "seconds a retired key stays published beyond `tokens.max_lifetime`", ge=0
    )
    reload_interval: float = setting(
        2.0, "seconds between checks of the keys directory for changes", ge=0
    )
    rotation_period: int = setting(
        604800,
        "intended seconds between rotations; drives the `seconds_to_next_rotation` metric",
        ge=3600,
    )
    min_next_age: int = setting(
        900,
        "`keys rotate` activates the next key only after it has been published this long (the "
        "shipped JWKS sync timer runs every 5 min, so twice in 15 min); `--force` overrides",
        ge=0,
    )


@dataclass(frozen=True)
class IdentityClaimNames:
    """Which upstream claims hold the POSIX identity (``identity_source = "claims"``).

    An empty name means "not read": ``gecos`` is then "", and without ``groups`` and ``gids``
    the group list is the primary gid alone.
    """

    uid: str = setting("uidNumber", "the uid: a JSON integer, 0 to 4294967294")
    gid: str = setting("gidNumber", "the primary gid, the same way")
    home: str = setting("homeDirectory", "an absolute path")
    shell: str = setting("loginShell", "an absolute path")
    gecos: str = setting(
        "",
        'a string; `""` means not read. An empty gecos becomes the user name in the token: '
        "Slurm 26.05 refuses an identity with an empty one",
    )
    groups: str = setting("", "an object group name → gid; becomes `id.groups`")
    gids: str = setting(
        "",
        "a list of gids; becomes `id.gids`. Set `groups` or `gids`, not both; with neither, "
        "`id.gids` is the primary gid alone",
    )

    def _validate(self, key: Callable[[str], str], present: set[str]) -> None:
        for name in ("uid", "gid", "home", "shell"):
            if not getattr(self, name):
                raise SettingsError(f"{key(name)}: is required (the claim holding the {name})")
        if self.groups and self.gids:
            raise SettingsError(
                f"{key('gids')}: set groups (an object name -> gid) or gids (a list), not both; "
                "Slurm takes one of them"
            )


@dataclass(frozen=True)
class TokenSettings:
    default_lifetime: int = setting(
        1800, "seconds, Slurm's own default for `scontrol token`", ge=60
    )
    max_lifetime: int = setting(3600, "the longest lifetime anyone may request (≥ 60)", ge=60)
    include_jti: bool = setting(
        True,
        "add a random `jti` claim after `exp`, `iat`, `sun` for audit correlation (Slurm "
        "ignores it); `false` gives exactly `scontrol token`'s claim set",
    )
    cap_to_upstream_exp: bool = setting(
        True,
        "a Slurm token never outlives the identity-provider token it was exchanged for",
    )
    # Slurm 26.05 use_jwt_client_ids: uid, gid and id in every token.
    identity_claims: bool = setting(
        False,
        "add `uid`, `gid` and `id` {name, gecos, dir, shell, groups or gids} after `sun` in "
        "every token, for every door and `mint`, RS256 and HS256 alike (Slurm 26.05 "
        "`use_jwt_client_ids`, AWS PCS; see [slurm.md](slurm.md)); older Slurm ignores them",
    )
    identity_source: str = setting(
        "nss",
        'where the identity comes from: `"nss"`, this host\'s `getpwnam` and group list at mint '
        'time; `"claims"`, the verified upstream token, as named in '
        "`[tokens.identity_claim_names]`",
        choices=IDENTITY_SOURCES,
    )
    identity_claim_names: IdentityClaimNames = setting(
        IdentityClaimNames,
        "which upstream claims hold the POSIX identity (read only with `identity_source = "
        '"claims"`)',
    )

    def _validate(self, key: Callable[[str], str], present: set[str]) -> None:
        if "identity_claim_names" in present and self.identity_source != "claims":
            raise SettingsError(
                f'{key("identity_claim_names")}: only read with identity_source = "claims"'
            )
        if self.default_lifetime > self.max_lifetime:
            raise SettingsError(
                f"{key('default_lifetime')}: {self.default_lifetime} exceeds "
                f"tokens.max_lifetime ({self.max_lifetime})"
            )


@dataclass(frozen=True)
class PolicySettings:
    slurm_user: str = setting(
        "slurm",
        "the cluster's SlurmUser; never gets a token (its token can act as anyone), nor does "
        "any other name with its uid",
        check=_username,
    )
    deny_users: tuple[str, ...] = setting(
        (),
        "names that never get a token, nor any other name with the same uid; wins over "
        "`allow_users`",
        check=_usernames,
    )
    allow_users: tuple[str, ...] = setting(
        (),
        "names exempt from the built-in protections (root, uid 0, SlurmUser, uid below "
        "`min_uid`); name an account here only when it must get tokens",
        check=_usernames,
    )
    min_uid: int = setting(
        1000,
        "names that resolve on the bridge's host to a uid below this are system accounts and "
        "refused; so are identity claims with such a uid",
        ge=0,
    )


@dataclass(frozen=True)
class JwksSettings:
    max_age: int = setting(300, "`Cache-Control: max-age` of `/.well-known/jwks.json`", ge=0)


@dataclass(frozen=True)
class AuditSettings:
    destination: str = setting(
        "stdout",
        "`stdout`, `stderr`, `file:/path/to/audit.log` or `none`; one JSON object per line, "
        "never a token",
        check=_audit_destination,
    )


@dataclass(frozen=True)
class IntrospectionSettings:
    client_id: str = setting(doc="the confidential client that may introspect")
    client_secret: str = setting(doc="its secret")


@dataclass(frozen=True)
class IssuerSettings:
    name: str = setting(doc="short name used in mapping rules, audit and metrics")
    kind: str = setting(doc="`keycloak`, `cognito`, `entra` or `oidc`", choices=ISSUER_KINDS)
    issuer: str = setting(
        doc="the exact `iss` value (Entra multi-tenant: may contain `{tenantid}`)", check=_url
    )
    audiences: tuple[str, ...] = setting(
        (),
        "accepted `aud` values (see [Audiences per kind](#audiences-per-kind)). Kind keycloak: "
        "`account`, `broker` and `realm-management` are refused (Keycloak adds them to tokens of "
        "every client of the realm)",
    )
    allowed_clients: tuple[str, ...] = setting(
        (),
        "accepted `azp` / `client_id` / `appid` values (Keycloak access tokens without a useful "
        "`aud`, Cognito access tokens)",
    )
    token_use: tuple[str, ...] = setting(
        ("access",),
        "token kinds accepted: `access` and/or `id`",
        choices=TOKEN_USES,
        check=_all_in(TOKEN_USES, "access and/or id"),
    )
    tenants: tuple[str, ...] = setting(
        (),
        "Entra: allowed `tid` values. Required for a `{tenantid}` issuer: without it the "
        "service refuses to start",
    )
    allow_any_tenant: bool = setting(
        False,
        "Entra `{tenantid}` issuer only: accept tokens of every Entra tenant in the world, on "
        "purpose (instead of `tenants`). Then every mapping rule for this issuer must map exact "
        "values: `table` + `table_only`, without `regex`, `strip_domain` or `command` (anything "
        "else is refused at start)",
    )
    service_tokens: str = setting(
        "sub_is_client",
        "`oidc` only: how a service (client-credentials) token is told from a user's token: "
        '`"sub_is_client"` (RFC 9068: its `sub` is its `client_id`/`azp`, and it carries no '
        "end-user or login-session claim such as `auth_time`, `sid`, `nonce`, "
        "`preferred_username`, `email`, `name`, nor the `openid` scope), "
        '`"claim:NAME=VALUE"` (a claim only the provider\'s client-credentials grant sets, '
        'e.g. `"claim:gty=client-credentials"`), or `"none"` (this issuer has no service '
        'tokens). Use a claim rule or `"none"` when users can choose their own `sub`',
        check=_service_tokens,
    )
    leeway: int = setting(60, "seconds of clock skew allowed for `exp`, `nbf`, `iat`", ge=0)
    jwks_refetch_interval: float = setting(
        60.0, "at most one JWKS refetch per this many seconds on an unknown `kid`", ge=0
    )
    jwks_stale_window: float = setting(
        3600.0, "seconds cached keys stay in use while the provider is unreachable", ge=0
    )
    http_timeout: float = setting(5.0, "seconds for discovery and JWKS requests", ge=0.1)
    discovery_url: str = setting(
        "", "override for `<issuer>/.well-known/openid-configuration`", check=_url
    )
    jwks_uri: str = setting("", "override for the discovered `jwks_uri`", check=_url)
    introspection: IntrospectionSettings | None = setting(
        None,
        'Keycloak: `{ client_id = "...", client_secret = "..." }` to introspect opaque tokens',
        shown=NO_DEFAULT,
    )
    # Browser login (authorization code + PKCE) against this issuer.
    client_id: str = setting(
        "", "browser login against this issuer: the bridge's client (see `[browser]`)"
    )
    client_secret: str = setting("", "browser login: its secret (a confidential client)")
    scopes: tuple[str, ...] = setting(LOGIN_SCOPES, "browser login: the scopes requested")
    display_name: str = setting("", "browser login: the name on the login button")
    # Plain http to another machine for discovery, JWKS and introspection (refused otherwise).
    allow_insecure_http: bool = setting(
        False,
        "allow plain `http://` to another machine for `issuer`, `discovery_url`, `jwks_uri` "
        "(also one named by the discovery document) and introspection; logged as a warning at "
        "every start",
    )
    ca_file: str = setting(
        "",
        "PEM file of the CA certificates this issuer's HTTPS certificate is checked against "
        "(discovery, JWKS, introspection, browser login and revocation), instead of the system "
        "store; relative to this file's directory. Refused at start when it is missing, "
        "unreadable or holds no certificate",
        check=_ca_file,
    )

    def _validate(self, key: Callable[[str], str], present: set[str]) -> None:
        if self.kind == KEYCLOAK and self.issuer.endswith("/"):
            raise SettingsError(
                f"{key('issuer')}: Keycloak's issuer is <base>/realms/<realm> without a trailing "
                f"slash (its tokens' iss has none), got {show(self.issuer)}"
            )
        if "introspection" in present and (
            self.kind != KEYCLOAK or not KEYCLOAK_ISSUER_RE.match(self.issuer)
        ):
            raise SettingsError(
                f'{key("introspection")}: needs kind = "keycloak" and an issuer '
                "<base>/realms/<realm>"
            )
        if not self.audiences and not self.allowed_clients:
            raise SettingsError(
                f"{key('audiences')}: set audiences or allowed_clients, "
                "or any token from this issuer would be accepted"
            )
        self._check_audience_rule(key)
        self._check_tenants(key)
        if self.kind != OIDC and "service_tokens" in present:
            raise SettingsError(
                f"{key('service_tokens')}: only for kind oidc "
                f"({self.kind} tokens say it themselves)"
            )
        for what in ("issuer", "discovery_url", "jwks_uri"):
            url = getattr(self, what)
            if insecure_url(url) and not self.allow_insecure_http:
                raise SettingsError(
                    f"{key(what)}: plain http to another machine lets anyone on the path inject "
                    f"signing keys; use https (or allow_insecure_http = true), got {show(url)}"
                )
        if self.allow_insecure_http:
            log.warning(
                "issuer %r: allow_insecure_http = true: its discovery, JWKS and introspection "
                "may travel over plain http, where anyone on the path can forge tokens for it",
                self.name,
            )

    def _check_audience_rule(self, key: Callable[[str], str]) -> None:
        """Each kind matches a token to the entry its own way (docs/configuration.md, "Audiences
        per kind"): refuse an entry under which every token of a kind it accepts is refused."""
        realm_wide = [a for a in self.audiences if a in KEYCLOAK_REALM_AUDIENCES]
        if self.kind == KEYCLOAK and realm_wide:
            raise SettingsError(
                f"{key('audiences')}: issuer {self.name!r} (kind keycloak) lists "
                f"{realm_wide[0]!r}, an audience Keycloak puts on access tokens of every client "
                "of the realm, so any of them would be accepted; give the bridge's own client an "
                "audience mapper and list that audience, or use allowed_clients"
            )
        if self.kind == ENTRA and not self.audiences:
            raise SettingsError(
                f"{key('audiences')}: issuer {self.name!r} (kind entra) accepts a token only "
                "when its aud is one of audiences (allowed_clients only narrows the client "
                "applications); with none set every token is refused"
            )
        if self.kind == COGNITO and "access" in self.token_use and not self.allowed_clients:
            raise SettingsError(
                f"{key('allowed_clients')}: issuer {self.name!r} (kind cognito) accepts an "
                "access token only when its client_id is one of allowed_clients (Cognito access "
                "tokens carry no aud); with none set every access token is refused "
                '(or token_use = ["id"])'
            )

    def _check_tenants(self, key: Callable[[str], str]) -> None:
        """An Entra ``{tenantid}`` issuer trusts every tenant in the world unless ``tenants``
        lists the trusted ones; ``allow_any_tenant = true`` says so on purpose."""
        multi = self.kind == ENTRA and TENANT_PLACEHOLDER in self.issuer
        if self.allow_any_tenant and not multi:
            raise SettingsError(
                f"{key('allow_any_tenant')}: only for kind entra with a {TENANT_PLACEHOLDER} issuer"
            )
        if self.allow_any_tenant and self.tenants:
            raise SettingsError(
                f"{key('allow_any_tenant')}: set tenants or allow_any_tenant, not both"
            )
        if multi and not self.tenants and not self.allow_any_tenant:
            raise SettingsError(
                f"{key('tenants')}: list the trusted tenant ids; a {TENANT_PLACEHOLDER} issuer "
                "without them accepts tokens from every Entra tenant "
                "(allow_any_tenant = true to mean it)"
            )


@dataclass(frozen=True)
class MappingRule:
    claim: str = setting(
        doc="source claim, a dotted path (`preferred_username`, `realm_access.roles`). A value "
        "holding a control, format or line-separator character never maps. A rule on `email` "
        "does not match a token whose `email_verified` is false",
    )
    issuer: str = setting(
        "*", "the `name` of an `[[issuers]]` entry, or `*` for any", check=_issuer_ref_or_any
    )
    regex: str = setting(
        "",
        "a regular expression with a named group `user`; no match means the rule does not apply",
        check=_user_regex,
    )
    lowercase: bool = setting(False, "lower-case the value")
    strip_domain: bool = setting(False, "drop everything from the first `@`")
    table: dict[str, str] = setting(
        dict, "a static table value → user name, applied after the transforms"
    )
    table_only: bool = setting(
        False, "with `table`: a value missing from the table means the rule does not apply"
    )
    require_groups: tuple[str, ...] = setting(
        (), "the token must carry at least one of these groups"
    )
    require_roles: tuple[str, ...] = setting(
        (),
        "the token must carry at least one of these roles. Keycloak: a bare name is a realm "
        "role; a client role is written `<client>:<role>` (a role of the same name on another "
        "client never counts)",
    )
    command: tuple[str, ...] = setting(
        (),
        "argv of a lookup command (like Open OnDemand's `user_map_cmd`); prints the user name",
        check=_argv,
        raw=True,
    )
    command_input: str = setting(
        "argv",
        "`argv`: `--` and then the value are appended as the last two arguments (so a value "
        "starting with `-` is never an option of the command); `stdin`: written to its input",
        choices=("argv", "stdin"),
    )
    command_timeout: float = setting(
        5.0, "seconds before the command is killed and the mapping refused", ge=0.1
    )
    command_cache_ttl: float = setting(300.0, "seconds a command's answer is cached", ge=0)


@dataclass(frozen=True)
class MappingSettings:
    # Slurm takes a token for a name it cannot resolve as user "nobody" (read access to the
    # queue, and on 22.05 queued jobs): refuse names without a local account by default.
    require_local_account: bool = setting(
        True,
        "the result must also resolve with `getpwnam` on the bridge's host. Keep it on: "
        "slurmctld accepts a token for a name it cannot resolve as user `nobody` (read access "
        "to the queue; on 22.05 even queued jobs). Turn it off only where the bridge's host "
        "cannot see the cluster's accounts (a container without SSSD/LDAP) and the mapping "
        "rules cannot produce a name that is missing on the controller",
    )
    rules: tuple[MappingRule, ...] = setting(
        (), "ordered rules, `[[mapping.rules]]`; the first that matches wins"
    )


@dataclass(frozen=True)
class ServiceAccount:
    """A service's own IdP token (client credentials) -> one fixed cluster account."""

    issuer: str = setting(doc="the `name` of an `[[issuers]]` entry", check=_issuer_ref)
    client_id: str = setting(doc="the service's `azp` / `client_id` / `appid`")
    account: str = setting(
        doc="the cluster account its tokens are for (the `[policy]` rules still apply)",
        check=_username,
    )
    max_lifetime: int | None = setting(
        None, "a lower lifetime cap for this account", ge=60, shown="`tokens.max_lifetime`"
    )
    algs: tuple[str, ...] = setting(
        SIGNING_ALGS,
        "signing algorithms this account may ask for",
        choices=SIGNING_ALGS,
        check=_all_in(SIGNING_ALGS, "RS256 and/or HS256"),
    )
    identity_claims: bool | None = setting(
        None,
        "`true` or `false`: identity claims for this account's tokens regardless of the global "
        'setting (with `identity_source = "claims"`, read from the service\'s own token)',
        shown="`tokens.identity_claims`",
    )


@dataclass(frozen=True)
class DelegationActor:
    """A trusted portal that may exchange its users' tokens (RFC 8693 actor_token)."""

    issuer: str = setting(
        doc="the `name` of the `[[issuers]]` entry that issues the portal's token",
        check=_issuer_ref,
    )
    client_id: str = setting(doc="the portal's client id")
    allow_requested_subject: bool = setting(
        False,
        "the portal may name a user with `requested_subject` instead of presenting the user's "
        "token (an extension, see [http.md](http.md))",
    )
    subject_groups: tuple[str, ...] = setting(
        (), "with `requested_subject`: the named user must be in one of these local groups"
    )
    subject_regex: str = setting(
        "",
        "with `requested_subject`: or match this regular expression (whole name)",
        check=_regex,
    )
    max_lifetime: int | None = setting(
        None, "a lower lifetime cap for delegated tokens", ge=60, shown="`tokens.max_lifetime`"
    )

    def _validate(self, key: Callable[[str], str], present: set[str]) -> None:
        if self.allow_requested_subject and not (self.subject_groups or self.subject_regex):
            raise SettingsError(
                f"{key('allow_requested_subject')}: needs subject_groups or subject_regex "
                "to bound which users the actor may name"
            )


@dataclass(frozen=True)
class BrowserSettings:
    enabled: bool = setting(
        True, "serve the login pages (`/`, `/login`, `/auth/callback`, `/token`, `/logout`)"
    )
    session_lifetime: int = setting(
        28800,
        "seconds a login lasts at most, counted from the login (not extended by use); tokens "
        "minted from the page never outlive it",
        ge=60,
    )
    secure_cookies: bool = setting(
        True,
        "mark the session cookie `Secure` and name it `__Host-sjb_session` (set `false` only "
        "for plain-http development; the cookie is then `sjb_session`)",
    )
    proxy_url: str = setting(
        "",
        "base URL shown in the token page's proxy `curl` example (hidden when empty)",
        check=_rstrip_slash,
        shown="`server.public_url` when `[proxy]` is enabled",
    )
    # Where sessions live: "" = the local directory session_dir; redis://... = shared by replicas
    session_storage_uri: str = setting(
        "",
        "where sessions live: empty = the local directory `session_dir` (one host); "
        "`redis://host:port/db` (also `rediss://`, `redis+unix://`, same style as "
        "`[rate_limit] storage_uri`) = shared by several replicas; needs the `redis` extra",
        check=_session_storage,
    )
    session_dir: Path = setting(
        Path("sessions"),
        "the local session store; created 0700 (files 0600); the service refuses to start when "
        "group/other may enter it",
        check=_session_dir,
        absent="",
        shown="`$STATE_DIRECTORY/sessions` under systemd, else `sessions` beside the config file",
    )
    slurm_api_version: str = setting(
        "v0.0.44",
        "the slurmrestd API version in the token page's examples (`v0.0.38` for Slurm 22.05; "
        "see [slurm.md](slurm.md)). With `[proxy] passthrough_slurm_tokens`, the page's proxy "
        "example sends the page's own token (`$SLURM_JWT`)",
        check=_api_version,
    )
    # The bridge's own device grant for `slurm-jwt-bridge login` (GET /device)
    device_login: bool = setting(
        True,
        "serve the bridge's own device grant for `slurm-jwt-bridge login` (`POST "
        "/oauth/device_authorization`, the device-code grant at `POST /oauth/token`, "
        "`GET`/`POST /device`) when a login issuer exists; used by `login` when `[cli_login]` "
        "names no issuer with a device grant",
    )
    device_code_lifetime: int = setting(
        600, "seconds a device code waits for Allow/Deny (60 to 3600)", ge=60, le=3600
    )
    device_poll_interval: int = setting(
        5,
        "the `interval` the terminal must keep between polls (1 to 60); a faster poll gets "
        "`slow_down` and 5 s more",
        ge=1,
        le=60,
    )
    device_max_attempts: int = setting(
        5,
        "wrong codes one browser session may type before the device page refuses it (429)",
        ge=1,
        le=100,
    )
    device_max_attempts_per_address: int = setting(
        20,
        "wrong codes one client address may type within `device_code_lifetime` before the page "
        "refuses it (429)",
        ge=1,
        le=10000,
    )


@dataclass(frozen=True)
class CliLoginSettings:
    """What ``slurm-jwt-bridge login`` needs for the device grant at the IdP."""

    issuer: str = setting(
        "",
        "the `name` of an `[[issuers]]` entry whose discovery has `device_authorization_endpoint`",
        check=_issuer_ref,
        shown=NO_DEFAULT,
    )
    client_id: str = setting(
        "", "a public client allowed to use the device grant", shown="required with `issuer`"
    )
    scopes: tuple[str, ...] = setting(LOGIN_SCOPES, "scopes requested")
    resource: str = setting(
        "",
        "RFC 8707 resource (so the access token's `aud` is one of the issuer's `audiences`)",
    )

    def _validate(self, key: Callable[[str], str], present: set[str]) -> None:
        if not present:
            return
        if "issuer" not in present:
            raise SettingsError(f"{key('issuer')}: is required")
        if "client_id" not in present:
            raise SettingsError(f"{key('client_id')}: is required")


@dataclass(frozen=True)
class RateLimitSettings:
    enabled: bool = setting(
        True,
        "limit the doors: `/oauth/token`, `/api/v1/token`, the device grant and page, `/login`, "
        "`/auth/callback` and the page's `POST /token` (per address), and the tokens per subject",
    )
    per_address: str = setting(
        "120/minute",
        "per client address (`[server] proxy_fix` decides which address that is)",
        check=_rate,
    )
    per_subject: str = setting(
        "60/minute",
        "per verified (issuer, subject): each upstream token verified at any door and each new "
        "token minted from a grant decided earlier (the page's new token, a device code); "
        'several limits separated by `;` (`"1000/hour;20/minute"`) all apply, as in `per_address`',
        check=_rate,
    )
    storage_uri: str = setting(
        "memory://",
        "`memory://` (per process) or `redis://host:port` shared by every worker and replica "
        "(needs the `redis` extra; `memcached://` needs `pymemcache`: without it the start is "
        "refused). "
        "While it cannot be reached, requests that would be counted are refused with 503 "
        "(fail closed; see [http.md](http.md))",
        check=_limiter_storage,
    )


@dataclass(frozen=True)
class ProxySettings:
    """The reverse proxy to slurmrestd (``/slurm``, ``/slurmdb``, ``/openapi``)."""

    upstream: str = setting(
        "",
        "`http://host:port` (a valid host, port 1-65535) or `unix:/path/to/slurmrestd.socket`",
        check=_slurmrestd,
    )
    auth_style: str = setting(
        "x-slurm",
        "`x-slurm`: `X-SLURM-USER-NAME` + `X-SLURM-USER-TOKEN` (needed by 22.05); `bearer`: "
        "`Authorization: Bearer` (23.02+)",
        choices=("x-slurm", "bearer"),
    )
    connect_timeout: float = setting(5.0, "seconds", ge=0.1)
    read_timeout: float = setting(60.0, "seconds to wait for slurmrestd's answer; then 504", ge=0.1)
    pool_size: int = setting(32, "keep-alive connections to slurmrestd per worker", ge=1)
    max_body: int = setting(
        1 << 20,
        "largest request body in bytes; larger gets 413 (a body is read whole before anything "
        "is minted or sent, then sent with its length)",
        ge=1024,
    )
    passthrough_slurm_tokens: bool = setting(
        False, "accept a raw Slurm JWT as the Bearer token and forward it"
    )
    token_lifetime: int = setting(
        0,
        "lifetime of the Slurm tokens the proxy mints (reused until 80 % of it, only for "
        "requests whose grant allows the same kind, actor, algorithms and maximum lifetime, and "
        "never past the presented upstream token's `exp`); 60 to `tokens.max_lifetime`",
        ge=0,
        shown="`tokens.default_lifetime`",
    )
    cache_size: int = setting(
        10000, "entries in each of the proxy's caches (verified tokens, Slurm tokens)", ge=1
    )
    auth_request: bool = setting(
        False,
        "serve `GET /proxy/auth`, the target of nginx's `auth_request` (docs/http.md); works "
        "without `upstream`",
    )
    auth_request_max_age: int = setting(
        60,
        "seconds (0 to 3600) nginx may cache a `/proxy/auth` answer (`X-Accel-Expires`); never "
        "past the Slurm token's reuse or the upstream token's expiry; `0`: never",
        ge=0,
        le=3600,
    )
    # Who may ask GET /proxy/auth (the nginx hosts): the TCP peer address, never a forwarded one.
    auth_request_allow_from: tuple[str, ...] = setting(
        AUTH_REQUEST_ALLOW_FROM,
        'addresses or networks (`"10.0.0.5"`, `"10.0.0.0/24"`, IPv6 too) of the nginx hosts '
        "that may ask `GET /proxy/auth`; anyone else gets 403 without a token. The TCP peer "
        "address counts, never `X-Forwarded-For` (`[server] proxy_fix` does not change it); a "
        "bad entry stops the start with one line",
        check=_networks(normalise=True, noun="an IP address or network"),
    )

    @property
    def enabled(self) -> bool:
        return bool(self.upstream)


@dataclass(frozen=True)
class Settings:
    # Read in this order: issuers first (the other sections name them), tokens before proxy.
    issuers: tuple[IssuerSettings, ...] = setting(
        (), "one `[[issuers]]` table per trusted identity provider"
    )
    tokens: TokenSettings = setting(TokenSettings, "the Slurm tokens minted")
    server: ServerSettings = setting(ServerSettings, "the HTTP service")
    keys: KeySettings = setting(KeySettings, "the signing keys")
    policy: PolicySettings = setting(PolicySettings, "who may get a token")
    jwks: JwksSettings = setting(JwksSettings, "the published JWKS")
    audit: AuditSettings = setting(AuditSettings, "the audit log")
    mapping: MappingSettings = setting(MappingSettings, "claims to cluster user names")
    service_accounts: tuple[ServiceAccount, ...] = setting(
        (), "services' own tokens, each to one fixed account"
    )
    delegation: tuple[DelegationActor, ...] = setting(
        (), "trusted portals, `[[delegation.actors]]`", inner="actors"
    )
    browser: BrowserSettings = setting(BrowserSettings, "the browser login")
    cli_login: CliLoginSettings = setting(
        CliLoginSettings, "the identity provider's device grant for `login`"
    )
    proxy: ProxySettings = setting(ProxySettings, "the reverse proxy to slurmrestd")
    rate_limit: RateLimitSettings = setting(RateLimitSettings, "request rate limits")

    def with_keys_dir(self, keys_dir: str | os.PathLike[str] | None) -> Settings:
        """Return a copy whose key directory is ``keys_dir`` (the CLI's ``--keys-dir``)."""
        if keys_dir is None:
            return self
        return replace(self, keys=replace(self.keys, dir=Path(keys_dir)))

    def issuer_named(self, name: str) -> IssuerSettings | None:
        return next((i for i in self.issuers if i.name == name), None)


# ---------------------------------------------------------------- checks across sections


def _check_issuer_names(settings: Settings) -> Iterator[str]:
    names = [i.name for i in settings.issuers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        yield f"issuers: the name {sorted(dupes)[0]!r} is used twice"


def _check_proxy_lifetime(settings: Settings) -> Iterator[str]:
    lifetime, maximum = settings.proxy.token_lifetime, settings.tokens.max_lifetime
    if lifetime and not 60 <= lifetime <= maximum:
        yield (
            f"proxy.token_lifetime: must be between 60 and tokens.max_lifetime ({maximum}), "
            f"got {lifetime}"
        )


def _check_login_clients(settings: Settings) -> Iterator[str]:
    """A browser-login client's ID tokens must be accepted by its own issuer entry."""
    for i, iss in enumerate(settings.issuers):
        if not iss.client_id:
            continue
        if iss.client_id not in iss.audiences:
            yield (
                f"issuers[{i}].audiences: must include client_id {iss.client_id!r} "
                "(browser login exchanges the ID token issued to it)"
            )
        elif "id" not in iss.token_use:
            yield (
                f'issuers[{i}].token_use: must include "id" when client_id is set for browser login'
            )


def _check_actors(settings: Settings) -> Iterator[str]:
    """A delegation actor must be a portal's own service client: the bridge's browser-login or
    terminal-login client hands user tokens to everyone who logs in."""
    cli = settings.cli_login
    for i, actor in enumerate(settings.delegation):
        iss = settings.issuer_named(actor.issuer)
        if iss is not None and iss.client_id == actor.client_id:
            door = "browser-login"
        elif (cli.issuer, cli.client_id) == (actor.issuer, actor.client_id):
            door = "terminal-login ([cli_login])"
        else:
            continue
        yield (
            f"delegation.actors[{i}].client_id: {actor.client_id!r} is the bridge's {door} "
            "client of issuer "
            f"{actor.issuer!r}; an actor must be a portal's own service client"
        )


def _check_any_tenant_rules(settings: Settings) -> Iterator[str]:
    """With ``allow_any_tenant``, a rule must not turn a stranger's account into a local name
    by dropping or ignoring the tenant (only exact values of a table_only table can map)."""
    open_issuers = {i.name for i in settings.issuers if i.allow_any_tenant}
    for i, rule in enumerate(settings.mapping.rules):
        hit = open_issuers if rule.issuer == "*" else open_issuers & {rule.issuer}
        if not hit:
            continue
        if rule.strip_domain:
            why = "strip_domain drops the tenant's domain"
        elif rule.regex:
            why = "a regex can drop the tenant's domain before any table lookup"
        elif rule.command:
            why = "a lookup command sees the value without the bridge knowing what it keeps"
        elif not (rule.table and rule.table_only):
            why = f"{rule.claim} without a table_only table can map a stranger's value"
        else:
            continue
        yield (
            f"mapping.rules[{i}]: issuer {sorted(hit)[0]!r} has allow_any_tenant = true and "
            f"{why}; map exact values with table + table_only"
        )


_CROSS_CHECKS = (_check_login_clients, _check_actors, _check_any_tenant_rules)


def parse_settings(data: dict[str, Any], base: Path | None = None) -> Settings:
    """Validate a parsed TOML document; relative paths are taken from ``base``.

    Every section is read even after one fails, so a file with several mistakes names them
    all: the SettingsError then holds one line per mistake."""
    raw = data.get("issuers") if isinstance(data, dict) else None
    entries = raw if isinstance(raw, list) else []
    # What the other sections may name, even when an entry fails.
    names = frozenset(
        n for i in entries if isinstance(i, dict) and isinstance(n := i.get("name"), str)
    )
    reader = Reader(Context(base or Path.cwd(), names))
    settings = reader.table(Settings, data, "", partial=True) or Settings()
    errors = reader.errors
    errors += [*_check_issuer_names(settings), *_check_proxy_lifetime(settings)]
    if not errors:  # these assume each section read cleanly
        for check in _CROSS_CHECKS:
            errors += list(check(settings))[:1]
            if errors:
                break
    if errors:
        raise SettingsError("\n".join(dict.fromkeys(errors)))
    return settings


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from ``path``, else ``$SLURM_JWT_BRIDGE_CONFIG``, else defaults.

    Relative paths in the file (such as ``[keys] dir``) are taken from the file's directory.
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is None:
        return parse_settings({}, Path.cwd()).with_keys_dir(os.environ.get(KEYS_DIR_ENV) or None)
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{p}: not valid TOML: {exc}") from None
    return parse_settings(data, p.resolve().parent).with_keys_dir(
        os.environ.get(KEYS_DIR_ENV) or None
    )


# ---------------------------------------------------------------- the JSON Schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the configuration file, from the declarations."""
    schema = object_schema(Settings)
    schema.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "slurm-jwt-bridge configuration (TOML)",
        **schema,
    }
