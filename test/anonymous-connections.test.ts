/**
 * Unauthenticated connections cannot use up what authenticated ones need (DESIGN.md §5,
 * invariant 9). A connection counts against its tenant's `limits.connections` only once it has a
 * credential (a client certificate in the handshake, or a request that authenticated); until
 * then it counts against the small `limits.unauthenticatedConnections` budget, is closed after a
 * refusal, and is closed if it does not authenticate within `limits.authenticationTimeout`.
 */
import { readFileSync } from 'node:fs';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { rawTls } from './helpers/client.js';
import { adsClient, adsOnce, bearer, metadata, TYPE_URL } from './helpers/grpc.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
let gateway: ExtraGateway;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  gateway = await startGatewayFrom(sandbox, (config) => {
    config.tenants[0].limits = { connections: 2, unauthenticatedConnections: 3, authenticationTimeout: '2s' };
  });
});
afterAll(async () => {
  await gateway.close();
  await sandbox.close();
});

const acme = () => tenantOf(sandbox, 'acme');
const sockets: TLSSocket[] = [];
afterAll(() => {
  for (const socket of sockets) socket.destroy();
});

/** A TLS connection to acme's host that sends nothing: an anonymous caller holding a slot. */
function anonymous(): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port: gateway.port('api'), servername: acme().host, ca: readFileSync(sandbox.info.caFile), ALPNProtocols: ['http/1.1'] });
    sockets.push(socket);
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

const closed = (socket: TLSSocket): Promise<void> => new Promise((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));

function sidecar(node: string) {
  const client = adsClient({ port: gateway.port('xds'), host: acme().host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  return adsOnce(client, metadata(bearer(acme().tokens.xds)), { node: { id: node }, type_url: TYPE_URL.cluster }).finally(() => client.close());
}

describe('connections that have not authenticated', () => {
  it("do not lock the tenant's real callers out, however many are held open", async () => {
    const held = [await anonymous(), await anonymous(), await anonymous()];
    // limits.connections is 2; three anonymous connections counted against it would refuse both.
    for (const node of ['sidecar-1', 'sidecar-2']) expect((await sidecar(node)).response?.type_url).toBe(TYPE_URL.cluster);
    for (const socket of held) socket.destroy();
    await Promise.all(held.map(closed));
  });

  it('make room, over their own budget, by closing the oldest of them', async () => {
    const held = [await anonymous(), await anonymous(), await anonymous()];
    const newest = await anonymous();
    await closed(held[0]!);
    expect(held.slice(1).every((s) => !s.closed) && !newest.closed).toBe(true);
    for (const socket of [...held, newest]) socket.destroy();
    await Promise.all([...held, newest].map(closed));
  });

  it('are closed after a refusal', async () => {
    const answer = await rawTls(
      { port: gateway.port('api'), servername: acme().host, ca: sandbox.info.caFile },
      `GET /debug/syncz HTTP/1.1\r\nHost: ${acme().host}\r\nConnection: keep-alive\r\n\r\n`,
      { waitForCloseMs: 5_000 },
    );
    expect(answer.text).toMatch(/^HTTP\/1\.1 401 /);
    expect(answer.text).toMatch(/\r\nconnection: close\r\n/i);
    expect(answer.closedByServer).toBe(true);
  });

  it('are closed when they do not authenticate within authenticationTimeout', async () => {
    const socket = await anonymous();
    const opened = Date.now();
    await vi.waitFor(() => expect(socket.closed).toBe(true), { timeout: 10_000, interval: 100 });
    expect(Date.now() - opened).toBeGreaterThanOrEqual(1_500);
  });

  it('stay open once a request on them authenticated', async () => {
    const answer = await rawTls(
      { port: gateway.port('api'), servername: acme().host, ca: sandbox.info.caFile },
      (write) => {
        const get = `GET /debug/syncz HTTP/1.1\r\nHost: ${acme().host}\r\nAuthorization: Bearer ${acme().tokens.debug}\r\n\r\n`;
        write(get);
        // Past authenticationTimeout, a second request on the same connection is still answered.
        setTimeout(() => write(get.replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n')), 2_500);
      },
      { waitForCloseMs: 8_000 },
    );
    expect(answer.text.match(/HTTP\/1\.1 200 /g)).toHaveLength(2);
  });
});
