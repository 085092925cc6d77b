// A real OpenID Provider (panva/oidc-provider, exact version in package.json) for
// tests/server/test_real_oidc_provider.py: one confidential client allowed the
// client-credentials grant, Resource Indicators (RFC 8707) turned on so that every access
// token is an RFC 9068 JWT ("typ": "at+jwt", ES256) for the resource it was asked for.
//
//   node provider.mjs PORT
//
// Environment (all required unless said otherwise):
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET  the client (client_secret_basic or _post)
//   OIDC_JWKS_FILE      the provider's private signing keys, a JWKS of EC P-256 keys
//   OIDC_SIGN_KID       optional: the kid that signs access tokens (default: the first key)
//   OIDC_RESOURCES      JSON {"<resource URI>": "<space-separated scopes it accepts>"}
//   OIDC_TOKEN_TTL      optional: access token lifetime in seconds (default 600)
//
// The issuer is http://127.0.0.1:PORT. On stdout, once listening: "READY <issuer>".
// It is resolved from a node_modules directory next to this file (the test links one there).
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} is required`);
    process.exit(2);
  }
  return value;
}

const port = Number(process.argv[2] || process.env.OIDC_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node provider.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(required('OIDC_JWKS_FILE'), 'utf8'));
const resources = JSON.parse(required('OIDC_RESOURCES'));
const signKid = process.env.OIDC_SIGN_KID || undefined;
const ttl = Number(process.env.OIDC_TOKEN_TTL || 600);

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: required('OIDC_CLIENT_ID'),
      client_secret: required('OIDC_CLIENT_SECRET'),
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      // The provider's keys are EC only (its default, RS256, would need an RSA key).
      id_token_signed_response_alg: 'ES256',
    },
  ],
  jwks,
  // Not used by the client-credentials grant; fixed so that no development keys are generated.
  cookies: { keys: ['stellakeys-interop-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // No resource, no token: a token without an audience would be opaque, not RFC 9068.
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (ctx, resource) => {
        if (!Object.hasOwn(resources, resource)) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: resources[resource],
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256', kid: signKid } },
        };
      },
    },
  },
  ttl: { ClientCredentials: ttl },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1').on('listening', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
