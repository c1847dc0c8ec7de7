"""Self-check of the test OpenID provider: ``python -m tests.helpers.oidc_selfcheck`` (repo root).

Needs requests, pyjwt and cryptography (e.g. a venv: python3 -m venv /tmp/oidchelper-venv &&
/tmp/oidchelper-venv/bin/pip install requests pyjwt cryptography). Starts both styles, obtains
client_credentials, authorization-code (alice) and device-flow (bob) tokens, verifies every
signature against the provider's JWKS and prints headers and claims, never the tokens themselves.
Exits non-zero on the first failed check.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import jwt
import requests

from tests.helpers.oidc import OidcError, OidcProvider, start_oidc_provider


def _verify(prov: OidcProvider, token: str, audience: str) -> tuple[dict, dict]:
    header = jwt.get_unverified_header(token)
    jwks = jwt.PyJWKSet.from_dict(prov.jwks())
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=["RS256", "ES256"],
        audience=audience,
        issuer=prov.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    unverified = jwt.decode(token, options={"verify_signature": False})
    assert claims == unverified
    return header, claims


def _show(label: str, header: dict, claims: dict) -> None:
    print(f"  {label}")
    print(f"    header: {json.dumps(header, sort_keys=True)}")
    print(f"    claims: {json.dumps(claims, sort_keys=True)}")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def check_style(workdir: pathlib.Path, style: str) -> None:
    prov = start_oidc_provider(workdir, style=style)
    try:
        disc = prov.discovery()
        print(f"== style={style} issuer={prov.issuer}")
        for k in (
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "userinfo_endpoint",
            "end_session_endpoint",
            "device_authorization_endpoint",
            "introspection_endpoint",
            "revocation_endpoint",
        ):
            print(f"  {k}: {disc.get(k)}")
        _check(disc["issuer"] == prov.issuer, "discovery issuer")
        print(f"  jwks: {[(k['kty'], k.get('alg'), k['kid']) for k in prov.jwks()['keys']]}")

        # client_credentials
        cc = prov.client_credentials("svc-portal", "svc-portal-secret")
        h, c = _verify(prov, cc["access_token"], prov.resource)
        _show(f"client_credentials svc-portal (expires_in={cc['expires_in']})", h, c)
        _check(c["client_id"] == "svc-portal" and c["sub"] == "svc-portal", "cc client_id/sub")
        if style == "keycloak":
            _check(c["preferred_username"] == "service-account-svc-portal", "cc preferred_username")
            _check(c["azp"] == "svc-portal" and c["clientId"] == "svc-portal", "cc azp/clientId")
        cc2 = prov.client_credentials(
            "svc-batch", "svc-batch-secret", resource="https://other.test", scope="profile"
        )
        h, c = _verify(prov, cc2["access_token"], "https://other.test")
        _show("client_credentials svc-batch resource=https://other.test scope=profile", h, c)
        try:
            prov.client_credentials("svc-portal", "wrong-secret")
            raise AssertionError("wrong client secret accepted")
        except OidcError as e:
            print(f"  wrong secret rejected: {str(e).split(': ', 3)[-1][:80]}")

        # authorization code + PKCE
        t = prov.login_tokens("alice")
        h, c = _verify(prov, t["access_token"], prov.resource)
        _show(f"login access token alice (bridge-test, scope={t.get('scope')!r})", h, c)
        _check(
            c["preferred_username"] == "alice" and c["groups"] == ["hpc-users"], "alice at claims"
        )
        _check(
            c["email"] == "alice@example.org" and c["client_id"] == "bridge-test",
            "alice at claims 2",
        )
        if style == "keycloak":
            _check(
                c["realm_access"] == {"roles": ["hpc-user"]} and c["azp"] == "bridge-test",
                "kc roles",
            )
        h, c = _verify(prov, t["id_token"], "bridge-test")
        _show("id token alice", h, c)
        _check(
            c["preferred_username"] == "alice" and c["groups"] == ["hpc-users"], "alice id claims"
        )
        _check(c["nonce"] == t["_nonce"], "nonce")
        _check("refresh_token" in t, "refresh token issued")
        r = prov.refresh("bridge-test", t["refresh_token"])
        h, c = _verify(prov, r["access_token"], prov.resource)
        _check(c["preferred_username"] == "alice", "refreshed claims")
        print("  refresh_token grant: ok (same claims)")

        for user in ("mallory", "eve", "carol"):
            t2 = prov.login_tokens(user, scope="openid profile email groups")
            _, c = _verify(prov, t2["access_token"], prov.resource)
            print(
                f"  login {user}: sub={c['sub']} "
                f"preferred_username={c.get('preferred_username')!r} "
                f"email={c.get('email')!r} groups={c.get('groups')}"
            )

        t3 = prov.login_tokens("alice", scope="openid")
        _, c = _verify(prov, t3["access_token"], prov.resource)
        _, ci = _verify(prov, t3["id_token"], "bridge-test")
        print(
            f"  login alice scope=openid: access token keys {sorted(c)}; id token keys {sorted(ci)}"
        )
        _check(
            "preferred_username" not in c and "groups" not in c,
            "scope openid only: no profile claims",
        )

        # public client (PKCE) via authorization code
        t4 = prov.login_tokens("bob", client_id="bridge-cli")
        _, c = _verify(prov, t4["access_token"], prov.resource)
        _check(
            c["client_id"] == "bridge-cli" and "hpc-admins" in c["groups"], "bridge-cli code flow"
        )
        print("  public client bridge-cli authorization_code+PKCE: ok")

        # PKCE is required for the public client
        q = {
            "client_id": "bridge-cli",
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": "http://127.0.0.1/cb",
            "state": "x",
        }
        resp = requests.get(
            disc["authorization_endpoint"], params=q, allow_redirects=False, timeout=10
        )
        loc = resp.headers.get("Location", "")
        _check("error=invalid_request" in loc, f"PKCE not required? {resp.status_code} {loc[:120]}")
        print("  public client without PKCE: rejected (invalid_request)")

        # device flow
        d = prov.device_authorization()
        print(f"  device authorization: keys={sorted(d)} verification_uri={d['verification_uri']}")
        try:
            prov.device_token(d["device_code"])
            raise AssertionError("device token before login")
        except OidcError as e:
            _check("authorization_pending" in str(e), f"pending: {e}")
            print("  device token before user login: authorization_pending")
        page = prov.device_login(d["user_code"], "bob")
        _check("Sign-in Success" in page, "device success page")
        dt = prov.device_token(d["device_code"])
        h, c = _verify(prov, dt["access_token"], prov.resource)
        _show("device-flow access token bob (bridge-cli)", h, c)
        h, c = _verify(prov, dt["id_token"], "bridge-cli")
        _show("device-flow id token bob", h, c)

        # introspection: JWT access tokens are refused by oidc-provider (structured tokens are
        # self-contained); refresh tokens can be introspected
        ir = requests.post(
            disc["introspection_endpoint"],
            data={"token": t["access_token"]},
            auth=("bridge-test", "bridge-test-secret"),
            timeout=10,
        )
        print(f"  introspection of the JWT access token: HTTP {ir.status_code} {ir.json()}")
        ir = requests.post(
            disc["introspection_endpoint"],
            data={"token": r["refresh_token"]},
            auth=("bridge-test", "bridge-test-secret"),
            timeout=10,
        )
        _check(
            ir.status_code == 200 and ir.json().get("active") is True, "introspect refresh token"
        )
        print(
            f"  introspection of the refresh token: active={ir.json()['active']} "
            f"token_type={ir.json().get('token_type')} sub={ir.json().get('sub')}"
        )
        rv = requests.post(
            disc["revocation_endpoint"],
            data={"token": r["refresh_token"]},
            auth=("bridge-test", "bridge-test-secret"),
            timeout=10,
        )
        ir = requests.post(
            disc["introspection_endpoint"],
            data={"token": r["refresh_token"]},
            auth=("bridge-test", "bridge-test-secret"),
            timeout=10,
        )
        _check(rv.status_code == 200 and ir.json().get("active") is False, "revoke refresh token")
        print("  revocation of the refresh token: ok (introspection then says active=false)")
        # RP-initiated logout: with a browser session it shows form#op.logoutForm (hidden xsrf;
        # button "Yes, sign me out" name=logout value=yes); without one (as here) it answers an
        # auto-submitting form (xsrf, logout=yes) to <end_session>/confirm
        lo = requests.get(
            disc["end_session_endpoint"],
            timeout=10,
            allow_redirects=False,
            params={
                "id_token_hint": t["id_token"],
                "client_id": "bridge-test",
                "post_logout_redirect_uri": "http://127.0.0.1/logged-out",
            },
        )
        _check(lo.status_code == 200 and 'name="xsrf"' in lo.text, f"logout page {lo.status_code}")
        print("  end_session with id_token_hint + post_logout_redirect_uri: 200 (logout form)")
        # userinfo with the resource-bound JWT access token
        ui = requests.get(
            disc["userinfo_endpoint"],
            timeout=10,
            headers={"Authorization": f"Bearer {t['access_token']}"},
        )
        print(f"  userinfo with JWT access token (aud=resource): HTTP {ui.status_code}")
        print(f"  log tail: {prov.log_tail(3).splitlines()}")
    finally:
        prov.stop()
    _check(prov.proc.poll() is not None, "node process stopped")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="oidc-selfcheck-") as tmp:
        try:
            for style in ("plain", "keycloak"):
                check_style(pathlib.Path(tmp), style)
        except (AssertionError, OidcError) as e:
            print(f"SELF-CHECK FAILED: {e}")
            return 1
    print("SELF-CHECK OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
