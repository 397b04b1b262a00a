/**
 * meshgate_upstream_replica_up follows an istiod replica back up: a replica whose session failed is
 * tried again when its backoff ends, with no stream asking for it, so the health it reports (and
 * the MeshgateIstiodReplicaDown alert) does not stay "down" because streams went elsewhere.
 */
import { readFileSync } from 'node:fs';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import { afterEach, describe, expect, it } from 'vitest';
import { createH2Pool, type H2Pool } from '../src/forward/h2-pool.js';
import { upstreamTls } from './helpers/grpc.js';
import { closedPort } from './helpers/upstream.js';

const closers: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

describe('replica health', () => {
  it('reports a replica up again once it answers, without a stream asking for it', async () => {
    const tls = await upstreamTls();
    const port = await closedPort();
    const states: string[] = [];
    let cameBack: () => void = () => undefined;
    const up = new Promise<void>((resolve) => (cameBack = resolve));
    const pool: H2Pool = createH2Pool({
      config: {
        url: `https://127.0.0.1:${port}`,
        discovery: 'static',
        dnsRefreshInterval: 30_000,
        serverName: tls.serverName,
        maxStreamsPerSession: 100,
        keepaliveInterval: 30_000,
        keepaliveTimeout: 10_000,
        connectTimeout: 2_000,
      },
      ca: readFileSync(tls.caFile, 'utf8'),
      allowLoopback: true,
      events: {
        health: (_replica, state) => {
          states.push(state);
          if (state === 'up') cameBack();
        },
      },
    });
    closers.push(() => pool.close());

    // Nothing listens: the one stream fails, and the replica is down.
    await expect(pool.open({ ':method': 'POST', ':path': '/x' }, { endStream: true })).rejects.toMatchObject({ code: 'MG_ERR_UPSTREAM_UNAVAILABLE' });
    expect(states).toEqual(['down']);

    // The replica comes back on the same address; no stream is opened from here on.
    const server: Http2SecureServer = createSecureServer({ cert: tls.cert, key: tls.key });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    // The pool first: the server waits for its sessions to end.
    closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())), () => pool.close());
    await up;
    expect(states.at(-1)).toBe('up');
    // The session the pool opened to find out waits for the next stream.
    expect(pool.stats()).toEqual([{ replica: `127.0.0.1:${port}`, sessions: 1, streams: 0 }]);
  });
});
