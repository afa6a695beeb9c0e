// The peer for `bench/run.sh peer`: panva's oidc-provider on loopback, serving one
// confidential client (client_secret_basic) the client_credentials grant, with resource
// indicators on so that its access tokens are JWTs signed ES256 (a P-256 key made at start),
// as tailpass's are. Nothing else is configured beyond what that needs, so it runs as the
// library ships, in production mode (NODE_ENV=production, set by bench/run.sh).
//
//   node provider.mjs --port=N --client-id=ID --client-secret-file=FILE [--resource=R]
//
// The port may also come from PEER_PORT. The secret is read from the file (or, without one,
// from PEER_CLIENT_SECRET), never from the command line, where `ps` would show it.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

function option(name) {
  const prefix = `--${name}=`;
  const arg = process.argv.slice(2).find((a) => a.startsWith(prefix));
  return arg === undefined ? undefined : arg.slice(prefix.length);
}

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

const port = Number(option('port') ?? process.env.PEER_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  fail('--port=N (or PEER_PORT) is required');
}
const clientId = option('client-id') ?? fail('--client-id=ID is required');
const secretFile = option('client-secret-file');
const clientSecret = secretFile === undefined
  ? process.env.PEER_CLIENT_SECRET
  : readFileSync(secretFile, 'utf8').replace(/\r?\n$/, '');
if (!clientSecret) {
  fail('--client-secret-file=FILE (or PEER_CLIENT_SECRET) is required');
}
const resource = option('resource') ?? 'https://api.bench.example';
const host = '127.0.0.1';
const issuer = `http://${host}:${port}`;

// The signing key: P-256, private, made now and never written anywhere.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomUUID(),
  alg: 'ES256',
  use: 'sig',
};

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: 'ES256',
    },
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A request naming no resource gets the one resource server there is.
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          audience: resource,
          scope: 'read write',
          accessTokenTTL: 900,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  ttl: { ClientCredentials: 900 },
});

provider.on('server_error', (_ctx, error) => {
  process.stderr.write(`server_error: ${error.message}\n`);
});

const server = provider.listen(port, host, () => {
  process.stdout.write(`oidc-provider listening on ${issuer}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
