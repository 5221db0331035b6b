// A real OpenID provider (panva/oidc-provider) on loopback over TLS, for agentgate's end-to-end
// identity test. Clients use the client-credentials grant and get JWT access tokens for the
// audience `agentgate`, with a `groups` claim per client.
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

const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: Object.keys(GROUPS).map(client),
  jwks: { keys: [{ ...signing, kid: 'es256-1', alg: 'ES256', use: 'sig' }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:agentgate',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'agentgate',
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
