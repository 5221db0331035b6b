// A real OpenID provider (panva/oidc-provider) on loopback over TLS, for agentgate's end-to-end
// identity test. Clients use the client-credentials grant and get JWT access tokens for the
// audience `agentgate`, with a `groups` claim per client.
//
// With CONSOLE_REDIRECT set (the web console's callback URL), it also serves people: a client
// `agentgate-console` (authorization code + PKCE) and the provider's development login pages,
// where any password signs in the account named; CONSOLE_ACCOUNTS (JSON: name -> groups) gives
// each account's `groups` claim, which the ID token carries.
//
// usage: node provider.mjs PORT CERT.pem KEY.pem   (prints "ready ISSUER" when listening)
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [port, certFile, keyFile] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;

const GROUPS = { 'agent-a': ['agents'], outsider: ['marketing'] };
const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret-0123456789`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'ES256',
});

const consoleRedirect = process.env.CONSOLE_REDIRECT;
const accounts = JSON.parse(process.env.CONSOLE_ACCOUNTS || '{}');
const clients = Object.keys(GROUPS).map(client);
if (consoleRedirect) {
  clients.push({
    client_id: 'agentgate-console',
    client_secret: 'agentgate-console-secret-0123456789',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [consoleRedirect],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'ES256',
  });
}

const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients,
  claims: { openid: ['sub'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, name: id, groups: accounts[id] ?? [] }),
  }),
  // The console's sign-in: consent is implied for this first-party client.
  loadExistingGrant: async (ctx) => {
    if (ctx.oidc.client?.clientId !== 'agentgate-console' || !ctx.oidc.session?.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: 'agentgate-console', accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile groups');
    grant.addOIDCClaims(['sub', 'name', 'groups']);
    await grant.save();
    return grant;
  },
  jwks: { keys: [{ ...signing, kid: 'es256-1', alg: 'ES256', use: 'sig' }] },
  features: {
    devInteractions: { enabled: Boolean(consoleRedirect) },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // People signing in to the console get an ID token (and an opaque token), no API token.
      defaultResource: (ctx, client) => (client?.clientId === 'agentgate-console' ? undefined : 'urn:agentgate'),
      useGrantedResource: () => true,
      // A client naming an https resource (RFC 8707, as MCP clients do) gets a token for it.
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'api',
        audience: resource.startsWith('https://') ? resource : 'agentgate',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => ({ groups: GROUPS[token.clientId] ?? [] }),
});

https
  .createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
