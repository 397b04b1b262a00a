/**
 * A stand-in for a cluster's OIDC discovery endpoints over HTTPS: `/openid/v1/jwks` and
 * `/.well-known/openid-configuration`, for issuers configured by JWKS URL. It counts fetches, so
 * tests can see how often meshgate asks.
 */
import { createServer } from 'node:https';
import type { Issuer } from '../issuer.js';
import { closeServer } from './istiod.js';
import { listen } from '../../listener/listen.js';

export interface JwksServer {
  readonly url: string;
  /** The JWKS URL of one cluster. */
  jwksUrl(cluster: string): string;
  /** How many times a cluster's JWKS was fetched. */
  fetches(cluster: string): number;
  close(): Promise<void>;
}

export async function startJwksServer(
  issuers: readonly Issuer[],
  tls: { readonly cert: string; readonly key: string },
  host = '127.0.0.1',
): Promise<JwksServer> {
  const counts = new Map<string, number>();
  const byCluster = new Map(issuers.map((i) => [i.cluster, i]));
  const server = createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
    const match = /^\/clusters\/([^/]+)(\/.*)$/.exec(req.url ?? '');
    const issuer = match?.[1] === undefined ? undefined : byCluster.get(match[1]);
    if (!issuer || !match) {
      res.writeHead(404).end();
      return;
    }
    if (match[2] === '/openid/v1/jwks') {
      counts.set(issuer.cluster, (counts.get(issuer.cluster) ?? 0) + 1);
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
      res.end(JSON.stringify(issuer.jwks()));
      return;
    }
    if (match[2] === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer: issuer.issuer, jwks_uri: `${url}/clusters/${issuer.cluster}/openid/v1/jwks` }));
      return;
    }
    res.writeHead(404).end();
  });
  const address = await listen(server, host);
  const url = `https://${address.address}:${address.port}`;
  return {
    url,
    jwksUrl: (cluster) => `${url}/clusters/${cluster}/openid/v1/jwks`,
    fetches: (cluster) => counts.get(cluster) ?? 0,
    close: () => closeServer(server),
  };
}
