// A real OpenID Provider for slurm-jwt-bridge integration tests.
//
// Built on npm `oidc-provider` 9.13.3 (panva, OpenID Certified). Test-only: it uses the
// development login form (devInteractions), in-memory storage and throw-away keys.
//
// Usage: node server.mjs CONFIG.json
//
// CONFIG.json (written by tests/helpers/oidc.py):
//   port       TCP port to listen on
//   host       address to bind (127.0.0.1)
//   issuer     "http://127.0.0.1:PORT" (style "plain") or
//              "http://127.0.0.1:PORT/realms/<realm>" (style "keycloak")
//   style      "plain" | "keycloak"
//   clients    array of oidc-provider client metadata (client_id, client_secret, grant_types,
//              redirect_uris, token_endpoint_auth_method, ...)
//   accounts   map sub -> claims, e.g. {"alice": {"preferred_username": "alice",
//              "email": "alice@example.org", "groups": ["hpc-users"],
//              "realm_roles": ["hpc-user"], "client_roles": {"bridge-test": ["x"]}}}
//              The devInteractions login form takes the account id (= sub, the map key).
//              An id that is not in the map still logs in, with no claims but `sub`.
//   resource   default resource indicator = audience of JWT access tokens
//              (any absolute URI asked for with `resource=` is accepted as well and becomes
//              the audience, so tests can obtain wrong-audience tokens)
//   ttl        optional {AccessToken, IdToken, DeviceCode, ClientCredentials} in seconds
//   jwks       optional {keys: [private JWKs]} to reuse keys; default: fresh RS256 + ES256
//
// Consent: there is NO consent screen. loadExistingGrant below grants every requested scope
// (OIDC scopes and resource scopes) to every client, as a first-party IdP would, and the
// policy check that forces consent for native clients is removed. Only an explicit
// prompt=consent shows the devInteractions consent form (one "Continue" button).
//
// Logging: one line per request on stdout, "METHOD PATH STATUS MS" (path without the query
// string, so no id_token_hint / codes end up in logs). "READY <issuer>" once listening.
//
// ---------------------------------------------------------------------------------------
// Device flow, played by a test (checked with Chromium + Playwright here):
//   1. Client: POST <device_authorization_endpoint> form client_id=bridge-cli,
//      scope="openid profile email groups" (optional resource=...). Answer: device_code,
//      user_code ("XXXX-XXXX"), verification_uri, verification_uri_complete, expires_in
//      (no `interval`: poll every 5 s, the RFC 8628 default).
//      plain:    <issuer>/device/auth                       verification_uri <issuer>/device
//      keycloak: <issuer>/protocol/openid-connect/auth/device  verification_uri <issuer>/device
//   2. User opens verification_uri_complete (= verification_uri?user_code=XXXX-XXXX): the page
//      auto-submits (JS) a form with hidden xsrf + user_code (a "Continue" button in <noscript>).
//      Or opens the bare verification_uri: form#op.deviceInputForm, fill input[name=user_code],
//      click button "Continue".
//   3. "Confirm Device" page (title "Device Login Confirmation"): click button "Continue"
//      (form#op.deviceConfirmForm: hidden xsrf, user_code, confirm=yes; "[ Abort ]" = name abort).
//   4. Unless the browser already has a session here: "Sign-in" page at <issuer>/interaction/<uid>:
//      fill input[name=login] with the account id (alice), input[name=password] with anything,
//      click button "Sign-in" (hidden prompt=login). No consent page.
//   5. Ends at <issuer>/device/<uid>, title/h1 "Sign-in Success".
//   6. Client: POST token endpoint grant_type=urn:ietf:params:oauth:grant-type:device_code,
//      device_code=..., client_id=bridge-cli -> access_token (JWT), id_token, refresh_token.
//      Before step 5 it answers 400 {"error":"authorization_pending"}.
// ---------------------------------------------------------------------------------------

import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as crypto from 'node:crypto';

import Provider, { interactionPolicy } from 'oidc-provider';

const cfgPath = process.argv[2];
if (!cfgPath) {
  console.error('usage: node server.mjs CONFIG.json');
  process.exit(2);
}
const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));

const style = cfg.style || 'plain';
if (!['plain', 'keycloak'].includes(style)) {
  console.error(`unknown style ${style}`);
  process.exit(2);
}
const host = cfg.host || '127.0.0.1';
const port = Number(cfg.port);
const issuer = cfg.issuer.replace(/\/$/, '');
const mountPath = new URL(issuer).pathname.replace(/\/$/, ''); // "" or "/realms/hpc"
const RESOURCE = cfg.resource || 'https://bridge.test';
const accounts = cfg.accounts || {};
const ttlCfg = cfg.ttl || {};
const RS_SCOPE = 'openid profile email groups posix';

const ttl = {
  AccessToken: Number(ttlCfg.AccessToken ?? 3600),
  IdToken: Number(ttlCfg.IdToken ?? 3600),
  DeviceCode: Number(ttlCfg.DeviceCode ?? 600),
  ClientCredentials: Number(ttlCfg.ClientCredentials ?? 600),
};

function makeJwks() {
  if (cfg.jwks?.keys?.length) return cfg.jwks;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const kid = (p) => `${p}-${crypto.randomBytes(6).toString('hex')}`;
  return {
    keys: [
      { ...rsa, kid: kid('rs256'), use: 'sig', alg: 'RS256' },
      { ...ec, kid: kid('es256'), use: 'sig', alg: 'ES256' },
    ],
  };
}

// Claims put into access tokens / ID tokens, by scope.
const SCOPE_CLAIMS = {
  openid: ['sub'],
  profile: ['preferred_username', 'name', 'given_name', 'family_name'],
  email: ['email', 'email_verified'],
  groups: ['groups'],
  // POSIX attributes as Keycloak's LDAP user federation maps them (attribute mappers with
  // claim JSON type int/long for the numbers).
  posix: ['uidNumber', 'gidNumber', 'homeDirectory', 'loginShell', 'gids'],
};

function accountClaims(sub) {
  const c = accounts[sub] || {};
  const out = { sub };
  for (const [k, v] of Object.entries(c)) {
    if (k !== 'sub') out[k] = v;
  }
  return out;
}

function claimsForScope(sub, scope) {
  const scopes = new Set(String(scope || '').split(' ').filter(Boolean));
  const all = accountClaims(sub);
  const out = {};
  for (const [s, names] of Object.entries(SCOPE_CLAIMS)) {
    if (s === 'openid' || !scopes.has(s)) continue;
    for (const n of names) {
      if (all[n] !== undefined) out[n] = all[n];
    }
  }
  return out;
}

const routes = style === 'keycloak'
  ? {
    authorization: '/protocol/openid-connect/auth',
    token: '/protocol/openid-connect/token',
    jwks: '/protocol/openid-connect/certs',
    userinfo: '/protocol/openid-connect/userinfo',
    end_session: '/protocol/openid-connect/logout',
    device_authorization: '/protocol/openid-connect/auth/device',
    code_verification: '/device',
    introspection: '/protocol/openid-connect/token/introspect',
    revocation: '/protocol/openid-connect/revoke',
    pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
  }
  : {
    // oidc-provider defaults (listed for documentation)
    authorization: '/auth',
    token: '/token',
    jwks: '/jwks',
    userinfo: '/me',
    end_session: '/session/end',
    device_authorization: '/device/auth',
    code_verification: '/device',
    introspection: '/token/introspection',
    revocation: '/token/revocation',
    pushed_authorization_request: '/request',
  };

function keycloakRoles(sub, clientId) {
  const c = accounts[sub] || {};
  const extra = {};
  extra.realm_access = { roles: Array.isArray(c.realm_roles) ? c.realm_roles : [] };
  const cr = c.client_roles;
  if (cr && typeof cr === 'object' && !Array.isArray(cr)) {
    extra.resource_access = Object.fromEntries(
      Object.entries(cr).map(([cid, roles]) => [cid, { roles }]),
    );
  } else if (Array.isArray(cr)) {
    // a plain list means: roles of the requesting client
    extra.resource_access = { [clientId]: { roles: cr } };
  } else {
    extra.resource_access = {};
  }
  return extra;
}

// No consent screen, also not for native clients (oidc-provider asks native clients, e.g. the
// device-flow CLI, for consent every time by default). prompt=consent still shows it.
const policy = interactionPolicy.base();
policy.get('consent').checks.remove('native_client_prompt');

const configuration = {
  interactions: { policy },
  clients: cfg.clients || [],
  jwks: makeJwks(),
  cookies: {
    keys: [crypto.randomBytes(32).toString('hex')],
    // Browsers share cookies of 127.0.0.1 across ports: make the names unique per instance so
    // two providers (plain + keycloak) used by one browser do not overwrite each other.
    names: {
      session: `_op_session_${port}`,
      interaction: `_op_interaction_${port}`,
      resume: `_op_interaction_resume_${port}`,
    },
  },
  claims: {
    // keycloak style: ID tokens also carry azp and typ "ID" (added in findAccount for use id_token)
    openid: style === 'keycloak' ? ['sub', 'azp', 'typ'] : ['sub'],
    profile: SCOPE_CLAIMS.profile,
    email: SCOPE_CLAIMS.email,
    groups: SCOPE_CLAIMS.groups,
    posix: SCOPE_CLAIMS.posix,
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'posix'],
  // put the scope-requested claims into the ID token too, not only in userinfo
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: cfg.deviceFlow !== false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => ({
        scope: RS_SCOPE,
        audience: resourceIndicator,
        accessTokenTTL: ctx?.oidc?.params?.grant_type === 'client_credentials'
          ? ttl.ClientCredentials : ttl.AccessToken,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  // PKCE (S256 only in oidc-provider 9) is required for public clients (auth method none).
  pkce: { required: (ctx, client) => client.clientAuthMethod === 'none' },
  ttl: {
    AccessToken: () => ttl.AccessToken,
    IdToken: () => ttl.IdToken,
    DeviceCode: () => ttl.DeviceCode,
    ClientCredentials: () => ttl.ClientCredentials,
    AuthorizationCode: () => 60,
    Interaction: () => 3600,
    Session: () => 24 * 3600,
    Grant: () => 24 * 3600,
    RefreshToken: () => 24 * 3600,
  },
  routes,
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims(use, scope) {
        const out = accountClaims(sub);
        if (style === 'keycloak' && use === 'id_token' && ctx?.oidc?.client) {
          Object.assign(out, { azp: ctx.oidc.client.clientId, typ: 'ID' });
        }
        return out;
      },
    };
  },
  // refresh tokens whenever the client may use them (not only with offline_access)
  async issueRefreshToken(ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  // No consent screen: grant everything that was asked for.
  async loadExistingGrant(ctx) {
    const { provider, client, account, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session?.grantIdFor(client.clientId);
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new provider.Grant({ clientId: client.clientId, accountId: account.accountId });
    }
    const requested = String(ctx.oidc.params?.scope || 'openid').split(' ').filter(Boolean);
    grant.addOIDCScope(requested.join(' '));
    const rsScopes = new Set(RS_SCOPE.split(' '));
    const resources = Object.keys(ctx.oidc.resourceServers || {});
    if (!resources.length) resources.push(RESOURCE);
    for (const r of resources) {
      grant.addResourceScope(r, requested.filter((s) => rsScopes.has(s)).join(' '));
    }
    await grant.save();
    return grant;
  },
  async extraTokenClaims(ctx, token) {
    const clientId = token.clientId || token.client?.clientId;
    const extra = {};
    if (token.kind === 'ClientCredentials') {
      if (style === 'keycloak') {
        Object.assign(extra, {
          azp: clientId,
          typ: 'Bearer',
          preferred_username: `service-account-${clientId}`,
          clientId,
          realm_access: { roles: [] },
          resource_access: {},
        });
      }
      return extra;
    }
    if (token.accountId) {
      Object.assign(extra, claimsForScope(token.accountId, token.scope));
      if (style === 'keycloak') {
        Object.assign(extra, { azp: clientId, typ: 'Bearer' }, keycloakRoles(token.accountId, clientId));
      }
    }
    return extra;
  },
  formats: {
    customizers: {
      // Keycloak signs access tokens with header typ "JWT" (oidc-provider: "at+jwt")
      async jwt(ctx, token, jwt) {
        if (style === 'keycloak') jwt.header = { ...(jwt.header || {}), typ: 'JWT' };
      },
    },
  },
  async renderError(ctx, out, error) {
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>error</title></head><body><h1>oops! something went wrong</h1>${
      Object.entries(out).map(([k, v]) => `<pre><strong>${esc(k)}</strong>: ${esc(v)}</pre>`).join('')}</body></html>`;
  },
};

const provider = new Provider(issuer, configuration);

provider.on('server_error', (ctx, err) => {
  console.log(`SERVER_ERROR ${ctx?.path} ${err?.stack || err}`);
});
provider.on('grant.error', (ctx, err) => {
  console.log(`GRANT_ERROR ${err?.name}: ${err?.message} ${err?.error_description || ''}`);
});
provider.on('authorization.error', (ctx, err) => {
  console.log(`AUTHORIZATION_ERROR ${err?.name}: ${err?.message} ${err?.error_description || ''}`);
});

const callback = provider.callback();

// oidc-provider's built-in pages (devInteractions login, device flow, logout) @import a Google
// font. Nothing outside this machine may be contacted by a test browser: strip it from every
// HTML answer (Koa ends string bodies with a single res.end(body) before headers are sent).
const EXTERNAL_CSS = /@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);?/g;
function stripExternal(res) {
  const end = res.end.bind(res);
  res.end = (chunk, ...rest) => {
    const type = String(res.getHeader('content-type') || '');
    if (chunk && type.includes('html') && !res.headersSent) {
      const text = Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
      if (text.includes('fonts.googleapis.com')) {
        const out = Buffer.from(text.replace(EXTERNAL_CSS, ''), 'utf8');
        res.setHeader('content-length', out.length);
        return end(out, ...rest.filter((a) => typeof a === 'function'));
      }
    }
    return end(chunk, ...rest);
  };
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  const path = (req.url || '/').split('?')[0];
  stripExternal(res);
  res.on('finish', () => {
    console.log(`${req.method} ${path} ${res.statusCode} ${Date.now() - started}ms`);
  });
  if (mountPath) {
    // Serve the provider under the issuer's path (Keycloak: /realms/<realm>).
    if (req.url === mountPath || req.url.startsWith(`${mountPath}/`) || req.url.startsWith(`${mountPath}?`)) {
      req.originalUrl = req.url;
      req.url = req.url.slice(mountPath.length) || '/';
    } else {
      res.statusCode = 404;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ error: 'not_found' }));
      return;
    }
  }
  callback(req, res);
});

server.listen(port, host, () => {
  console.log(`READY ${issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
