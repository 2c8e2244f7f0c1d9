// A real OpenID Provider (the OpenID Certified `oidc-provider` package) on loopback for loggate's
// sign-in tests. See /work/shared/notes/oidc-test-provider.md for every choice below.
//
// It binds 127.0.0.1:$PORT (0: any free port) *first*, builds the provider with the issuer
// `http://127.0.0.1:<bound port>` and prints one line `LISTENING http://127.0.0.1:PORT` on stdout;
// warnings go to stderr. State is in memory.
//
// Environment:
//   PORT            port to bind (default 0)
//   SKEW            seconds added to the provider's clock (-300: tokens already expired)
//   ID_TOKEN_TTL    ID token lifetime in seconds (default 3600)
//   CONFORM=1       ID tokens carry only the protocol claims (the rest at /me), as some IdPs do
//   AUTH_TIME=on_request  ID tokens leave `auth_time` out unless the request asks for it
//                   (`max_age`, or `prompt=login`), as Google's and Entra ID's do by default: the
//                   clients are registered without `require_auth_time` (OIDC Core 3.1.2.1 and
//                   oidc-provider 9's `assignClaims`)
//
// Users (password `<name>-pw`): alice (alice@example.com, verified, groups sre+payments),
// bob (bob@example.com, verified, dev), carol (carol@example.com, NOT verified),
// dave (dave@elsewhere.test, verified), "eve o'hara" (a preferred_username that is no name),
// admin (admin@example.com, verified, sre; the loopback harness's controller admin).
//
// Test hooks (outside the provider, for tests only; the fixture only ever listens on loopback):
//   GET  /__test/jwks?mode=down|empty|up   the JWKS endpoint answers 503 / no keys / normally
//   GET  /__test/rotate                    switch to a provider signing with new keys (b),
//                                          its JWKS listing b and the old keys (a)
//   POST /__test/sign {alg, payload, key}  sign a token: alg RS256|ES256 with the current
//        signing key (key "unknown": a key the JWKS does not list), `none` (no signature), or
//        HS256 keyed with the RSA public key's PEM (the algorithm-confusion attack)

import http from 'node:http';
import crypto from 'node:crypto';

const SKEW = Number(process.env.SKEW || 0);
if (SKEW) {
  const realNow = Date.now;
  Date.now = () => realNow() + SKEW * 1000;
}

const { default: Provider, interactionPolicy } = await import('oidc-provider');
const { generateKeyPair, exportJWK, SignJWT, importJWK } = await import('jose');

const ID_TOKEN_TTL = Number(process.env.ID_TOKEN_TTL || 3600);
const CONFORM = process.env.CONFORM === '1';
const AUTH_TIME_ON_REQUEST = process.env.AUTH_TIME === 'on_request';

const USERS = {
  alice: { email: 'alice@example.com', email_verified: true, preferred_username: 'alice', groups: ['sre', 'payments'] },
  bob: { email: 'bob@example.com', email_verified: true, preferred_username: 'bob', groups: ['dev'] },
  carol: { email: 'carol@example.com', email_verified: false, preferred_username: 'carol', groups: ['dev'] },
  dave: { email: 'dave@elsewhere.test', email_verified: true, preferred_username: 'dave', groups: [] },
  eve: { email: 'eve@example.com', email_verified: true, preferred_username: "eve o'hara", groups: [] },
  admin: { email: 'admin@example.com', email_verified: true, preferred_username: 'admin', groups: ['sre'] },
};

async function makeKey(alg, kid) {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { jwk: { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' }, publicKey };
}

const keysA = [await makeKey('RS256', 'rs-a'), await makeKey('ES256', 'es-a')];
const keysB = [await makeKey('RS256', 'rs-b'), await makeKey('ES256', 'es-b')];
const unknownKeys = { RS256: await makeKey('RS256', 'rs-unknown'), ES256: await makeKey('ES256', 'es-unknown') };

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

function makeProvider(keys) {
  const policy = interactionPolicy.base();
  policy.get('consent').checks.remove('native_client_prompt');
  const nativeClient = (clientId) => ({
    client_id: clientId,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    require_auth_time: !AUTH_TIME_ON_REQUEST,
  });
  const provider = new Provider(issuer, {
    jwks: { keys: keys.map((k) => k.jwk) },
    clients: [
      nativeClient('loggate-cli'),
      nativeClient('another-app'),
      {
        ...nativeClient('loggate-es'),
        id_token_signed_response_alg: 'ES256',
      },
    ],
    pkce: { required: () => true },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub', 'acr', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username'],
      groups: ['groups'],
      sid: null,
      auth_time: null,
      iss: null,
    },
    acrValues: ['urn:loggate:pwd'],
    conformIdTokenClaims: CONFORM,
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    ttl: { IdToken: ID_TOKEN_TTL, AccessToken: 600, DeviceCode: 600, Interaction: 600, Session: 3600, Grant: 3600 },
    interactions: { policy },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid email profile groups');
      await grant.save();
      return grant;
    },
    async findAccount(ctx, id) {
      const user = USERS[id];
      if (!user) return undefined;
      return { accountId: id, claims: () => ({ sub: id, ...user }) };
    },
  });
  return provider;
}

const provider = makeProvider(keysA);
const handlerA = provider.callback();
let providerB = null;
let handlerB = null;
let jwksMode = 'up';

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 65536) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

async function signToken({ alg, payload, key }) {
  const current = providerB ? keysB : keysA;
  if (alg === 'none') {
    return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(payload)}.`;
  }
  if (alg === 'HS256') {
    const rsa = current.find((k) => k.jwk.alg === 'RS256');
    const pem = rsa.publicKey.export ? rsa.publicKey.export({ type: 'spki', format: 'pem' })
      : crypto.createPublicKey({ key: { kty: rsa.jwk.kty, n: rsa.jwk.n, e: rsa.jwk.e }, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    return new SignJWT(payload).setProtectedHeader({ alg: 'HS256', kid: rsa.jwk.kid, typ: 'JWT' })
      .sign(new TextEncoder().encode(pem));
  }
  const chosen = key === 'unknown' ? unknownKeys[alg] : current.find((k) => k.jwk.alg === alg);
  if (!chosen) throw new Error(`no key for ${alg}`);
  const privateKey = await importJWK(chosen.jwk, alg);
  return new SignJWT(payload).setProtectedHeader({ alg, kid: chosen.jwk.kid, typ: 'JWT' }).sign(privateKey);
}

// Our own login and consent handling in front of devInteractions, so that a wrong password is
// refused and the login carries amr/acr (devInteractions accepts any password and sets neither).
async function interaction(req, res, current) {
  const form = new URLSearchParams(await readBody(req));
  const details = await current.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    const login = form.get('login') || '';
    if (!USERS[login] || form.get('password') !== `${login}-pw`) {
      send(res, 401, 'wrong user name or password', 'text/plain');
      return;
    }
    await current.interactionFinished(req, res, { login: { accountId: login, amr: ['pwd'], acr: 'urn:loggate:pwd' } }, { mergeWithLastSubmission: false });
    return;
  }
  if (details.prompt.name === 'consent') {
    const grant = new current.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope(String(details.params.scope || 'openid'));
    const grantId = await grant.save();
    await current.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  send(res, 400, `unexpected prompt ${details.prompt.name}`, 'text/plain');
}

server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__test/jwks') {
      jwksMode = url.searchParams.get('mode') || 'up';
      send(res, 200, { mode: jwksMode });
      return;
    }
    if (url.pathname === '/__test/rotate') {
      if (!providerB) {
        providerB = makeProvider([...keysB, ...keysA]);
        handlerB = providerB.callback();
      }
      send(res, 200, { kids: [...keysB, ...keysA].map((k) => k.jwk.kid) });
      return;
    }
    if (url.pathname === '/__test/sign' && req.method === 'POST') {
      const token = await signToken(JSON.parse(await readBody(req)));
      send(res, 200, { token });
      return;
    }
    if (url.pathname === '/jwks' && jwksMode !== 'up') {
      if (jwksMode === 'down') send(res, 503, { error: 'temporarily_unavailable' });
      else send(res, 200, { keys: [] });
      return;
    }
    const current = providerB || provider;
    if (req.method === 'POST' && /^\/interaction\/[^/]+$/.test(url.pathname)) {
      await interaction(req, res, current);
      return;
    }
    (providerB ? handlerB : handlerA)(req, res);
  } catch (err) {
    process.stderr.write(`fixture error: ${err && err.stack}\n`);
    if (!res.headersSent) send(res, 500, { error: String(err && err.message) });
    else res.end();
  }
});

process.stdout.write(`LISTENING ${issuer}\n`);
