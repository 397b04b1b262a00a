/**
 * A WebSocket as the byte stream an agent tunnel's HTTP/2 runs over, on either side. Unlike ws's
 * createWebSocketStream, ending it ends the tunnel at once: HTTP/2 ends its connection only when
 * it is done with it, and a WebSocket closing handshake would wait (up to ws's 30 s) for a peer
 * that may be gone or misbehaving. Binary messages in, each write one binary message out; a full
 * read buffer pauses the WebSocket.
 */
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';

export function webSocketStream(ws: WebSocket): Duplex {
  const stream = new Duplex({
    read() {
      if (ws.isPaused) ws.resume();
    },
    write(chunk: Buffer, _encoding, done) {
      if (ws.readyState !== ws.OPEN) {
        done(new Error('the WebSocket is closed'));
        return;
      }
      ws.send(chunk, { binary: true }, done);
    },
    final(done) {
      ws.terminate();
      done();
    },
    destroy(err, done) {
      ws.terminate();
      done(err);
    },
  });
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (!isBinary) {
      stream.destroy(new Error('the tunnel carries binary messages only'));
      return;
    }
    if (!stream.push(data)) ws.pause();
  });
  ws.once('close', () => stream.push(null));
  ws.once('error', (err) => stream.destroy(err));
  stream.on('end', () => stream.destroy());
  return stream;
}
