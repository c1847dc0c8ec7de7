"""The service configuration: one TOML file, validated at start.

Every error is one line that names the key that is wrong, e.g.
``tokens.max_lifetime: must be an integer >= 60, got 'soon'``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from .untrusted import insecure_url

log = logging.getLogger(__name__)

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


class SettingsError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    secret_key_file: str = ""
    proxy_fix: int = 0
    # Client networks that get /metrics and /readyz's details (everyone else: 403, yes/no).
    internal_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class KeySettings:
    dir: Path = Path("keys")
    default_alg: str = RS256
    rsa_bits: int = 2048
    retire_margin: int = 300
    reload_interval: float = 2.0
    rotation_period: int = 604800
    min_next_age: int = 900


@dataclass(frozen=True)
class IdentityClaimNames:
    """Which upstream claims hold the POSIX identity (``identity_source = "claims"``).

    An empty name means "not read": ``gecos`` is then "", and without ``groups`` and ``gids``
    the group list is the primary gid alone.
    """

    uid: str = "uidNumber"
    gid: str = "gidNumber"
    home: str = "homeDirectory"
    shell: str = "loginShell"
    gecos: str = ""
    groups: str = ""
    gids: str = ""


@dataclass(frozen=True)
class TokenSettings:
    default_lifetime: int = 1800
    max_lifetime: int = 3600
    include_jti: bool = True
    cap_to_upstream_exp: bool = True
    # Slurm 26.05 use_jwt_client_ids: uid, gid and id in every token.
    identity_claims: bool = False
    identity_source: str = "nss"
    identity_claim_names: IdentityClaimNames = field(default_factory=IdentityClaimNames)


@dataclass(frozen=True)
class PolicySettings:
    slurm_user: str = "slurm"
    deny_users: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    min_uid: int = 1000


@dataclass(frozen=True)
class JwksSettings:
    max_age: int = 300


@dataclass(frozen=True)
class AuditSettings:
    destination: str = "stdout"


@dataclass(frozen=True)
class IntrospectionSettings:
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class IssuerSettings:
    name: str
    kind: str
    issuer: str
    audiences: tuple[str, ...] = ()
    allowed_clients: tuple[str, ...] = ()
    token_use: tuple[str, ...] = ("access",)
    tenants: tuple[str, ...] = ()
    allow_any_tenant: bool = False
    service_tokens: str = "sub_is_client"
    leeway: int = 60
    jwks_refetch_interval: float = 60.0
    jwks_stale_window: float = 3600.0
    http_timeout: float = 5.0
    discovery_url: str = ""
    jwks_uri: str = ""
    introspection: IntrospectionSettings | None = None
    # Browser login (authorization code + PKCE) against this issuer.
    client_id: str = ""
    client_secret: str = ""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    display_name: str = ""
    # Plain http to another machine for discovery, JWKS and introspection (refused otherwise).
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class MappingRule:
    claim: str
    issuer: str = "*"
    regex: str = ""
    lowercase: bool = False
    strip_domain: bool = False
    table: dict[str, str] = field(default_factory=dict)
    table_only: bool = False
    require_groups: tuple[str, ...] = ()
    require_roles: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    command_input: str = "argv"
    command_timeout: float = 5.0
    command_cache_ttl: float = 300.0


@dataclass(frozen=True)
class MappingSettings:
    # Slurm takes a token for a name it cannot resolve as user "nobody" (read access to the
    # queue, and on 22.05 queued jobs): refuse names without a local account by default.
    require_local_account: bool = True
    rules: tuple[MappingRule, ...] = ()


@dataclass(frozen=True)
class ServiceAccount:
    """A service's own IdP token (client credentials) -> one fixed cluster account."""

    issuer: str
    client_id: str
    account: str
    max_lifetime: int | None = None
    algs: tuple[str, ...] = SIGNING_ALGS
    identity_claims: bool | None = None  # None: tokens.identity_claims


@dataclass(frozen=True)
class DelegationActor:
    """A trusted portal that may exchange its users' tokens (RFC 8693 actor_token)."""

    issuer: str
    client_id: str
    allow_requested_subject: bool = False
    subject_groups: tuple[str, ...] = ()
    subject_regex: str = ""
    max_lifetime: int | None = None


@dataclass(frozen=True)
class BrowserSettings:
    enabled: bool = True
    session_lifetime: int = 28800
    secure_cookies: bool = True
    proxy_url: str = ""
    # Where sessions live: "" = the local directory session_dir; redis://... = shared by replicas
    session_storage_uri: str = ""
    session_dir: Path = Path("sessions")
    slurm_api_version: str = "v0.0.44"
    # The bridge's own device grant for `slurm-jwt-bridge login` (GET /device)
    device_login: bool = True
    device_code_lifetime: int = 600
    device_poll_interval: int = 5
    device_max_attempts: int = 5
    device_max_attempts_per_address: int = 20


@dataclass(frozen=True)
class CliLoginSettings:
    """What ``slurm-jwt-bridge login`` needs for the device grant at the IdP."""

    issuer: str = ""
    client_id: str = ""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    resource: str = ""


@dataclass(frozen=True)
class RateLimitSettings:
    enabled: bool = True
    per_address: str = "120/minute"
    per_subject: str = "60/minute"
    storage_uri: str = "memory://"


AUTH_REQUEST_ALLOW_FROM = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class ProxySettings:
    """The reverse proxy to slurmrestd (``/slurm``, ``/slurmdb``, ``/openapi``)."""

    upstream: str = ""
    auth_style: str = "x-slurm"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 32
    max_body: int = 1 << 20
    passthrough_slurm_tokens: bool = False
    token_lifetime: int = 0
    cache_size: int = 10000
    auth_request: bool = False
    auth_request_max_age: int = 60
    # Who may ask GET /proxy/auth (the nginx hosts): the TCP peer address, never a forwarded one.
    auth_request_allow_from: tuple[str, ...] = AUTH_REQUEST_ALLOW_FROM

    @property
    def enabled(self) -> bool:
        return bool(self.upstream)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    jwks: JwksSettings = field(default_factory=JwksSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    issuers: tuple[IssuerSettings, ...] = ()
    mapping: MappingSettings = field(default_factory=MappingSettings)
    service_accounts: tuple[ServiceAccount, ...] = ()
    delegation: tuple[DelegationActor, ...] = ()
    browser: BrowserSettings = field(default_factory=BrowserSettings)
    cli_login: CliLoginSettings = field(default_factory=CliLoginSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)

    def with_keys_dir(self, keys_dir: str | os.PathLike[str] | None) -> Settings:
        """Return a copy whose key directory is ``keys_dir`` (the CLI's ``--keys-dir``)."""
        if keys_dir is None:
            return self
        return replace(self, keys=replace(self.keys, dir=Path(keys_dir)))

    def issuer_named(self, name: str) -> IssuerSettings | None:
        return next((i for i in self.issuers if i.name == name), None)


# ---------------------------------------------------------------- validation helpers


class _Table:
    """A TOML table being read; remembers the dotted path for error messages."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: must be a table")
        self.data = dict(data)
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def str(self, name: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self._get(name)
        if value is None:
            if default is None:
                raise SettingsError(f"{self.key(name)}: is required")
            return default
        if not isinstance(value, str):
            raise SettingsError(f"{self.key(name)}: must be a string, got {_show(value)}")
        if choices and value not in choices:
            raise SettingsError(
                f"{self.key(name)}: must be one of {', '.join(choices)}, got {_show(value)}"
            )
        return value

    def int(
        self, name: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{self.key(name)}: must be an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise SettingsError(f"{self.key(name)}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{self.key(name)}: must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, minimum: float = 0) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{self.key(name)}: must be a number, got {_show(value)}")
        if value < minimum:
            raise SettingsError(f"{self.key(name)}: must be >= {minimum}, got {value}")
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SettingsError(f"{self.key(name)}: must be true or false, got {_show(value)}")
        return value

    def strs(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{self.key(name)}: must be a list of strings")
        return tuple(value)

    def table(self, name: str) -> _Table:
        value = self._get(name)
        return _Table({} if value is None else value, self.key(name))

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise SettingsError(f"{self.key(name)}: must be an array of tables ([[{name}]])")
        return [_Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise SettingsError(f"{self.key(unknown[0])}: unknown setting")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _username(t: _Table, name: str, value: str) -> str:
    """A cluster user name, by the policy's own rule (a name it refuses would fail every mint)."""
    problem = username_problem(value)
    if problem:
        raise SettingsError(f"{t.key(name)}: {problem}")
    return value


def _usernames(t: _Table, name: str) -> tuple[str, ...]:
    return tuple(_username(t, name, n) for n in t.strs(name))


# ---------------------------------------------------------------- sections


def _server(t: _Table, base: Path) -> ServerSettings:
    s = ServerSettings(
        host=t.str("host", "127.0.0.1"),
        port=t.int("port", 8000, minimum=0, maximum=65535),
        public_url=t.str("public_url", "").rstrip("/"),
        secret_key_file=_path(base, t.str("secret_key_file", "")),
        proxy_fix=t.int("proxy_fix", 0, minimum=0),
        internal_allow=t.strs("internal_allow", ("127.0.0.0/8", "::1/128")),
    )
    for net in s.internal_allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise SettingsError(
                f"{t.key('internal_allow')}: {_show(net)} is not an address or network"
            ) from None
    t.done()
    return s


def _keys(t: _Table, base: Path) -> KeySettings:
    raw_dir = t.str("dir", "keys")
    s = KeySettings(
        dir=Path(_path(base, raw_dir)),
        default_alg=t.str("default_alg", RS256, choices=SIGNING_ALGS),
        rsa_bits=t.int("rsa_bits", 2048),
        retire_margin=t.int("retire_margin", 300, minimum=0),
        reload_interval=t.number("reload_interval", 2.0),
        rotation_period=t.int("rotation_period", 604800, minimum=3600),
        min_next_age=t.int("min_next_age", 900, minimum=0),
    )
    if s.rsa_bits not in (2048, 3072, 4096):
        raise SettingsError(f"{t.key('rsa_bits')}: must be 2048, 3072 or 4096, got {s.rsa_bits}")
    t.done()
    return s


def _identity_claim_names(t: _Table) -> IdentityClaimNames:
    d = IdentityClaimNames()
    s = IdentityClaimNames(
        **{name: t.str(name, getattr(d, name)) for name in IdentityClaimNames.__dataclass_fields__}
    )
    for name in ("uid", "gid", "home", "shell"):
        if not getattr(s, name):
            raise SettingsError(f"{t.key(name)}: is required (the claim holding the {name})")
    if s.groups and s.gids:
        raise SettingsError(
            f"{t.key('gids')}: set groups (an object name -> gid) or gids (a list), not both; "
            "Slurm takes one of them"
        )
    t.done()
    return s


def _tokens(t: _Table) -> TokenSettings:
    source = t.str("identity_source", "nss", choices=IDENTITY_SOURCES)
    if t.has("identity_claim_names") and source != "claims":
        raise SettingsError(
            f'{t.key("identity_claim_names")}: only read with identity_source = "claims"'
        )
    s = TokenSettings(
        default_lifetime=t.int("default_lifetime", 1800, minimum=60),
        max_lifetime=t.int("max_lifetime", 3600, minimum=60),
        include_jti=t.bool("include_jti", True),
        cap_to_upstream_exp=t.bool("cap_to_upstream_exp", True),
        identity_claims=t.bool("identity_claims", False),
        identity_source=source,
        identity_claim_names=_identity_claim_names(t.table("identity_claim_names")),
    )
    if s.default_lifetime > s.max_lifetime:
        raise SettingsError(
            f"{t.key('default_lifetime')}: {s.default_lifetime} exceeds "
            f"tokens.max_lifetime ({s.max_lifetime})"
        )
    t.done()
    return s


def _policy(t: _Table) -> PolicySettings:
    s = PolicySettings(
        slurm_user=_username(t, "slurm_user", t.str("slurm_user", "slurm")),
        deny_users=_usernames(t, "deny_users"),
        allow_users=_usernames(t, "allow_users"),
        min_uid=t.int("min_uid", 1000, minimum=0),
    )
    t.done()
    return s


def _jwks(t: _Table) -> JwksSettings:
    s = JwksSettings(max_age=t.int("max_age", 300, minimum=0))
    t.done()
    return s


def _path(base: Path, value: str) -> str:
    """A path from the file, taken from the file's own directory when relative."""
    return value if not value or os.path.isabs(value) else str(base / value)


def _audit(t: _Table, base: Path) -> AuditSettings:
    dest = t.str("destination", "stdout")
    if dest not in ("stdout", "stderr", "none") and not dest.startswith("file:"):
        raise SettingsError(
            f"{t.key('destination')}: must be stdout, stderr, none or file:/path, got {_show(dest)}"
        )
    if dest.startswith("file:"):
        dest = "file:" + _path(base, dest[5:])
    t.done()
    return AuditSettings(destination=dest)


def _url(t: _Table, name: str, value: str) -> str:
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise SettingsError(f"{t.key(name)}: must be an http(s) URL, got {_show(value)}")
    return value


def _issuer(t: _Table) -> IssuerSettings:
    name = t.str("name")
    kind = t.str("kind", choices=ISSUER_KINDS)
    issuer = _url(t, "issuer", t.str("issuer"))
    if kind == KEYCLOAK and issuer.endswith("/"):
        raise SettingsError(
            f"{t.key('issuer')}: Keycloak's issuer is <base>/realms/<realm> without a trailing "
            f"slash (its tokens' iss has none), got {_show(issuer)}"
        )
    token_use = t.strs("token_use", ("access",))
    for use in token_use:
        if use not in TOKEN_USES:
            raise SettingsError(f"{t.key('token_use')}: must hold access and/or id, got {use!r}")
    intro = None
    if t.has("introspection") and (kind != KEYCLOAK or not KEYCLOAK_ISSUER_RE.match(issuer)):
        raise SettingsError(
            f'{t.key("introspection")}: needs kind = "keycloak" and an issuer <base>/realms/<realm>'
        )
    if t.has("introspection"):
        it = t.table("introspection")
        intro = IntrospectionSettings(it.str("client_id"), it.str("client_secret"))
        it.done()
    s = IssuerSettings(
        name=name,
        kind=kind,
        issuer=issuer,
        audiences=t.strs("audiences"),
        allowed_clients=t.strs("allowed_clients"),
        token_use=token_use,
        tenants=t.strs("tenants"),
        allow_any_tenant=t.bool("allow_any_tenant", False),
        service_tokens=t.str("service_tokens", "sub_is_client"),
        leeway=t.int("leeway", 60, minimum=0),
        jwks_refetch_interval=t.number("jwks_refetch_interval", 60.0),
        jwks_stale_window=t.number("jwks_stale_window", 3600.0),
        http_timeout=t.number("http_timeout", 5.0, minimum=0.1),
        discovery_url=_url(t, "discovery_url", t.str("discovery_url", "")),
        jwks_uri=_url(t, "jwks_uri", t.str("jwks_uri", "")),
        introspection=intro,
        client_id=t.str("client_id", ""),
        client_secret=t.str("client_secret", ""),
        scopes=t.strs("scopes", ("openid", "profile", "email")),
        display_name=t.str("display_name", ""),
        allow_insecure_http=t.bool("allow_insecure_http", False),
    )
    if not s.audiences and not s.allowed_clients:
        raise SettingsError(
            f"{t.key('audiences')}: set audiences or allowed_clients, "
            "or any token from this issuer would be accepted"
        )
    _check_audience_rule(t, s)
    _check_tenants(t, s)
    _check_service_tokens(t, s)
    for what in ("issuer", "discovery_url", "jwks_uri"):
        url = getattr(s, what)
        if insecure_url(url) and not s.allow_insecure_http:
            raise SettingsError(
                f"{t.key(what)}: plain http to another machine lets anyone on the path inject "
                f"signing keys; use https (or allow_insecure_http = true), got {_show(url)}"
            )
    if s.allow_insecure_http:
        log.warning(
            "issuer %r: allow_insecure_http = true: its discovery, JWKS and introspection may "
            "travel over plain http, where anyone on the path can forge tokens for it",
            s.name,
        )
    t.done()
    return s


def _check_audience_rule(t: _Table, s: IssuerSettings) -> None:
    """Each kind matches a token to the entry its own way (docs/configuration.md, "Audiences per
    kind"): refuse an entry under which every token of a kind it accepts would be refused."""
    if s.kind == ENTRA and not s.audiences:
        raise SettingsError(
            f"{t.key('audiences')}: issuer {s.name!r} (kind entra) accepts a token only when its "
            "aud is one of audiences (allowed_clients only narrows the client applications); "
            "with none set every token is refused"
        )
    if s.kind == COGNITO and "access" in s.token_use and not s.allowed_clients:
        raise SettingsError(
            f"{t.key('allowed_clients')}: issuer {s.name!r} (kind cognito) accepts an access "
            "token only when its client_id is one of allowed_clients (Cognito access tokens "
            'carry no aud); with none set every access token is refused (or token_use = ["id"])'
        )


def _check_tenants(t: _Table, s: IssuerSettings) -> None:
    """An Entra ``{tenantid}`` issuer trusts every tenant in the world unless ``tenants`` lists
    the trusted ones; ``allow_any_tenant = true`` says so on purpose."""
    multi = s.kind == ENTRA and TENANT_PLACEHOLDER in s.issuer
    if s.allow_any_tenant and not multi:
        raise SettingsError(
            f"{t.key('allow_any_tenant')}: only for kind entra with a {TENANT_PLACEHOLDER} issuer"
        )
    if s.allow_any_tenant and s.tenants:
        raise SettingsError(
            f"{t.key('allow_any_tenant')}: set tenants or allow_any_tenant, not both"
        )
    if multi and not s.tenants and not s.allow_any_tenant:
        raise SettingsError(
            f"{t.key('tenants')}: list the trusted tenant ids; a {TENANT_PLACEHOLDER} issuer "
            "without them accepts tokens from every Entra tenant "
            "(allow_any_tenant = true to mean it)"
        )


def _check_service_tokens(t: _Table, s: IssuerSettings) -> None:
    rule = s.service_tokens
    if s.kind != OIDC and t.has("service_tokens"):
        raise SettingsError(
            f"{t.key('service_tokens')}: only for kind oidc ({s.kind} tokens say it themselves)"
        )
    name, eq, value = rule.removeprefix("claim:").partition("=")
    if rule in ("sub_is_client", "none") or (rule.startswith("claim:") and name and eq and value):
        return
    raise SettingsError(
        f'{t.key("service_tokens")}: must be "sub_is_client", "none" or "claim:NAME=VALUE", '
        f"got {_show(rule)}"
    )


def _rule(t: _Table, issuer_names: set[str]) -> MappingRule:
    issuer = t.str("issuer", "*")
    if issuer != "*" and issuer not in issuer_names:
        raise SettingsError(f"{t.key('issuer')}: no [[issuers]] entry is named {issuer!r}")
    regex = t.str("regex", "")
    if regex:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise SettingsError(f"{t.key('regex')}: invalid regular expression: {exc}") from None
        if "user" not in compiled.groupindex:
            raise SettingsError(f"{t.key('regex')}: needs a named group (?P<user>...)")
    table_raw = t._get("table")
    table: dict[str, str] = {}
    if table_raw is not None:
        if not isinstance(table_raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table_raw.items()
        ):
            raise SettingsError(f"{t.key('table')}: must be a table of strings")
        table = dict(table_raw)
    command = t._get("command")
    if command is None:
        cmd: tuple[str, ...] = ()
    elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        cmd = tuple(command)
    else:
        raise SettingsError(f"{t.key('command')}: must be a non-empty list of strings (argv)")
    s = MappingRule(
        claim=t.str("claim"),
        issuer=issuer,
        regex=regex,
        lowercase=t.bool("lowercase", False),
        strip_domain=t.bool("strip_domain", False),
        table=table,
        table_only=t.bool("table_only", False),
        require_groups=t.strs("require_groups"),
        require_roles=t.strs("require_roles"),
        command=cmd,
        command_input=t.str("command_input", "argv", choices=("argv", "stdin")),
        command_timeout=t.number("command_timeout", 5.0, minimum=0.1),
        command_cache_ttl=t.number("command_cache_ttl", 300.0),
    )
    t.done()
    return s


def _mapping(t: _Table, issuer_names: set[str]) -> MappingSettings:
    s = MappingSettings(
        require_local_account=t.bool("require_local_account", True),
        rules=tuple(_rule(r, issuer_names) for r in t.tables("rules")),
    )
    t.done()
    return s


def _issuer_ref(t: _Table, names: set[str]) -> str:
    name = t.str("issuer")
    if name not in names:
        raise SettingsError(f"{t.key('issuer')}: no [[issuers]] entry is named {name!r}")
    return name


def _algs(t: _Table) -> tuple[str, ...]:
    algs = t.strs("algs", SIGNING_ALGS)
    for alg in algs:
        if alg not in SIGNING_ALGS:
            raise SettingsError(f"{t.key('algs')}: must hold RS256 and/or HS256, got {alg!r}")
    return algs


def _service_account(t: _Table, names: set[str]) -> ServiceAccount:
    s = ServiceAccount(
        issuer=_issuer_ref(t, names),
        client_id=t.str("client_id"),
        account=_username(t, "account", t.str("account")),
        max_lifetime=t.int("max_lifetime", 0, minimum=60) or None,
        algs=_algs(t),
        identity_claims=t.bool("identity_claims", False) if t.has("identity_claims") else None,
    )
    t.done()
    return s


def _actor(t: _Table, names: set[str]) -> DelegationActor:
    regex = t.str("subject_regex", "")
    if regex:
        try:
            re.compile(regex)
        except re.error as exc:
            raise SettingsError(
                f"{t.key('subject_regex')}: invalid regular expression: {exc}"
            ) from None
    s = DelegationActor(
        issuer=_issuer_ref(t, names),
        client_id=t.str("client_id"),
        allow_requested_subject=t.bool("allow_requested_subject", False),
        subject_groups=t.strs("subject_groups"),
        subject_regex=regex,
        max_lifetime=t.int("max_lifetime", 0, minimum=60) or None,
    )
    if s.allow_requested_subject and not (s.subject_groups or s.subject_regex):
        raise SettingsError(
            f"{t.key('allow_requested_subject')}: needs subject_groups or subject_regex "
            "to bound which users the actor may name"
        )
    t.done()
    return s


def _delegation(t: _Table, names: set[str]) -> tuple[DelegationActor, ...]:
    actors = tuple(_actor(a, names) for a in t.tables("actors"))
    t.done()
    return actors


def _browser(t: _Table, base: Path) -> BrowserSettings:
    raw_dir = t.str("session_dir", "")
    if not raw_dir:  # systemd's StateDirectory= when there is one, else beside the config file
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        raw_dir = str(Path(state) / "sessions") if state else "sessions"
    s = BrowserSettings(
        enabled=t.bool("enabled", True),
        session_lifetime=t.int("session_lifetime", 28800, minimum=60),
        secure_cookies=t.bool("secure_cookies", True),
        proxy_url=t.str("proxy_url", "").rstrip("/"),
        session_storage_uri=t.str("session_storage_uri", ""),
        session_dir=Path(_path(base, raw_dir)),
        slurm_api_version=t.str("slurm_api_version", "v0.0.44"),
        device_login=t.bool("device_login", True),
        device_code_lifetime=t.int("device_code_lifetime", 600, minimum=60, maximum=3600),
        device_poll_interval=t.int("device_poll_interval", 5, minimum=1, maximum=60),
        device_max_attempts=t.int("device_max_attempts", 5, minimum=1, maximum=100),
        device_max_attempts_per_address=t.int(
            "device_max_attempts_per_address", 20, minimum=1, maximum=10000
        ),
    )
    if not re.fullmatch(r"v\d+\.\d+\.\d+", s.slurm_api_version):
        raise SettingsError(
            f"{t.key('slurm_api_version')}: must look like v0.0.44, "
            f"got {_show(s.slurm_api_version)}"
        )
    if s.session_storage_uri and not re.match(
        r"^(redis|rediss|redis\+unix)://", s.session_storage_uri
    ):
        raise SettingsError(
            f"{t.key('session_storage_uri')}: must be empty (the local session_dir) or "
            f"redis://host:port, got {_show(s.session_storage_uri)}"
        )
    t.done()
    return s


def _cli_login(t: _Table, names: set[str]) -> CliLoginSettings:
    if not t.data:
        return CliLoginSettings()
    s = CliLoginSettings(
        issuer=_issuer_ref(t, names),
        client_id=t.str("client_id"),
        scopes=t.strs("scopes", ("openid", "profile", "email")),
        resource=t.str("resource", ""),
    )
    t.done()
    return s


def _proxy(t: _Table, tokens: TokenSettings) -> ProxySettings:
    upstream = t.str("upstream", "")
    if upstream and not (
        re.fullmatch(r"https?://[^\s/]+/?", upstream) or re.fullmatch(r"unix:/\S+", upstream)
    ):
        raise SettingsError(
            f"{t.key('upstream')}: must be http://host:port or unix:/path, got {_show(upstream)}"
        )
    s = ProxySettings(
        upstream=upstream.rstrip("/"),
        auth_style=t.str("auth_style", "x-slurm", choices=("x-slurm", "bearer")),
        connect_timeout=t.number("connect_timeout", 5.0, minimum=0.1),
        read_timeout=t.number("read_timeout", 60.0, minimum=0.1),
        pool_size=t.int("pool_size", 32, minimum=1),
        max_body=t.int("max_body", 1 << 20, minimum=1024),
        passthrough_slurm_tokens=t.bool("passthrough_slurm_tokens", False),
        token_lifetime=t.int("token_lifetime", 0, minimum=0),
        cache_size=t.int("cache_size", 10000, minimum=1),
        auth_request=t.bool("auth_request", False),
        auth_request_max_age=t.int("auth_request_max_age", 60, minimum=0, maximum=3600),
        auth_request_allow_from=_networks(t, "auth_request_allow_from", AUTH_REQUEST_ALLOW_FROM),
    )
    if s.token_lifetime and not 60 <= s.token_lifetime <= tokens.max_lifetime:
        raise SettingsError(
            f"{t.key('token_lifetime')}: must be between 60 and tokens.max_lifetime "
            f"({tokens.max_lifetime}), got {s.token_lifetime}"
        )
    t.done()
    return s


def _networks(t: _Table, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of IP addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``::1``), normalised."""
    import ipaddress

    out = []
    for value in t.strs(name, default):
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise SettingsError(
                f"{t.key(name)}: {_show(value)} is not an IP address or network"
            ) from None
    return tuple(out)


def _rate_limit(t: _Table) -> RateLimitSettings:
    from limits import parse_many

    s = RateLimitSettings(
        enabled=t.bool("enabled", True),
        per_address=t.str("per_address", "120/minute"),
        per_subject=t.str("per_subject", "60/minute"),
        storage_uri=t.str("storage_uri", "memory://"),
    )
    for name in ("per_address", "per_subject"):
        try:
            parse_many(getattr(s, name))
        except ValueError:
            raise SettingsError(
                f'{t.key(name)}: not a rate limit like "60/minute", got {_show(getattr(s, name))}'
            ) from None
    if not re.match(r"^(memory|redis|rediss|redis\+unix|memcached)://", s.storage_uri):
        raise SettingsError(
            f"{t.key('storage_uri')}: must be memory:// or redis://host:port, "
            f"got {_show(s.storage_uri)}"
        )
    t.done()
    return s


def _check_login_clients(issuers: tuple[IssuerSettings, ...]) -> None:
    """A browser-login client's ID tokens must be accepted by its own issuer entry."""
    for i, iss in enumerate(issuers):
        if not iss.client_id:
            continue
        if iss.client_id not in iss.audiences:
            raise SettingsError(
                f"issuers[{i}].audiences: must include client_id {iss.client_id!r} "
                "(browser login exchanges the ID token issued to it)"
            )
        if "id" not in iss.token_use:
            raise SettingsError(
                f'issuers[{i}].token_use: must include "id" when client_id is set for browser login'
            )


def _check_actors(settings: Settings) -> None:
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
        raise SettingsError(
            f"delegation.actors[{i}].client_id: {actor.client_id!r} is the bridge's {door} "
            "client of issuer "
            f"{actor.issuer!r}; an actor must be a portal's own service client"
        )


def _check_any_tenant_rules(settings: Settings) -> None:
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
        raise SettingsError(
            f"mapping.rules[{i}]: issuer {sorted(hit)[0]!r} has allow_any_tenant = true and {why}; "
            "map exact values with table + table_only"
        )


def parse_settings(data: dict[str, Any], base: Path | None = None) -> Settings:
    """Validate a parsed TOML document; relative paths are taken from ``base``.

    Every section is read even after one fails, so a file with several mistakes names them
    all: the SettingsError then holds one line per mistake."""
    root = _Table(data, "")
    base = base or Path.cwd()
    errors: list[str] = []

    def read(parse: Any, *args: Any, default: Any) -> Any:
        try:
            return parse(*args)
        except SettingsError as exc:
            errors.append(str(exc))
            return default

    issuers = tuple(
        i
        for i in (read(_issuer, t, default=None) for t in read(root.tables, "issuers", default=[]))
        if i is not None
    )
    names = [i.name for i in issuers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        errors.append(f"issuers: the name {sorted(dupes)[0]!r} is used twice")
    tokens = read(_tokens, root.table("tokens"), default=TokenSettings())
    known = set(names)
    settings = Settings(
        server=read(_server, root.table("server"), base, default=ServerSettings()),
        keys=read(_keys, root.table("keys"), base, default=KeySettings()),
        tokens=tokens,
        policy=read(_policy, root.table("policy"), default=PolicySettings()),
        jwks=read(_jwks, root.table("jwks"), default=JwksSettings()),
        audit=read(_audit, root.table("audit"), base, default=AuditSettings()),
        issuers=issuers,
        mapping=read(_mapping, root.table("mapping"), known, default=MappingSettings()),
        service_accounts=tuple(
            a
            for a in (
                read(_service_account, t, known, default=None)
                for t in read(root.tables, "service_accounts", default=[])
            )
            if a is not None
        ),
        delegation=read(_delegation, root.table("delegation"), known, default=()),
        browser=read(_browser, root.table("browser"), base, default=BrowserSettings()),
        cli_login=read(_cli_login, root.table("cli_login"), known, default=CliLoginSettings()),
        proxy=read(_proxy, root.table("proxy"), tokens, default=ProxySettings()),
        rate_limit=read(_rate_limit, root.table("rate_limit"), default=RateLimitSettings()),
    )
    read(root.done, default=None)
    if not errors:  # the checks across sections assume each section read cleanly
        read(_check_login_clients, issuers, default=None)
        read(_check_actors, settings, default=None)
        read(_check_any_tenant_rules, settings, default=None)
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
