/**
 * A whole HTTP/1.1 response written by hand on a raw socket: one that no longer belongs to an HTTP
 * server (an upgrade, a request that did not parse). It always closes the connection: the socket is
 * ended after the response, and destroyed a second later if the peer never reads it.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';

export function endRawResponse(
  socket: Socket,
  status: number,
  headers: Iterable<readonly [string, string]>,
  body: Buffer | string,
  reason = STATUS_CODES[status] ?? 'Error',
): void {
  if (!socket.destroyed && socket.writable) {
    const bytes = typeof body === 'string' ? Buffer.from(body) : body;
    let head = `HTTP/1.1 ${status} ${reason}\r\n`;
    for (const [name, value] of headers) head += `${name}: ${value}\r\n`;
    head += `content-length: ${bytes.length}\r\nconnection: close\r\n\r\n`;
    socket.end(Buffer.concat([Buffer.from(head, 'latin1'), bytes]));
  }
  // The peer has a second to read the answer; a half-closed socket must not linger.
  setTimeout(() => socket.destroy(), 1_000).unref();
}
