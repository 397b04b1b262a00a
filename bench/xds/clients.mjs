// The sidecars of the xds benchmark: node:http2 clients, one TLS connection and one ADS stream
// each, as istio-agent holds them. Driven over IPC by bench/xds.mjs:
//   {cmd: 'open', n, port, servername, authority, ca, tokens}  open n, resolve when each has its first message
//   {cmd: 'storm'}      drop every connection at once and reconnect them all at once
//   {cmd: 'arm', bytes}  from now on, expect `bytes` more on every stream
//   {cmd: 'wait'}       answer once every stream has received them
//   {cmd: 'close'}
import { connect } from 'node:http2';
import { setTimeout as sleep } from 'node:timers/promises';

const ADS = '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources';
// A DiscoveryRequest's size and shape on the wire do not matter to a proxy; 300 bytes is typical.
const REQUEST = Buffer.concat([Buffer.from([0, 0, 0, 1, 44]), Buffer.alloc(300, 2)]);

let target;
let sidecars = [];
/** Why attempts failed, by message: refused connections, resets, handshake timeouts. */
let failures = new Map();

/** One sidecar: connects, opens its stream, resolves on its first message; retries until it does. */
function sidecar(index) {
  const state = { received: 0, waiters: [] };
  state.ready = (async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await once(state, index);
        return attempt;
      } catch (err) {
        failures.set(err.code ?? err.message, (failures.get(err.code ?? err.message) ?? 0) + 1);
        state.session?.destroy();
        // A refused or reset connection: back off briefly, as istio-agent does, and try again.
        await sleep(Math.min(1000, 50 * 2 ** attempt) * (0.5 + Math.random()));
      }
    }
  })();
  return state;
}

function once(state, index) {
  return new Promise((resolve, reject) => {
    const session = connect(`https://127.0.0.1:${target.port}`, {
      ca: target.ca,
      servername: target.servername,
      settings: { initialWindowSize: 1 << 20 },
    });
    state.session = session;
    session.on('error', reject);
    session.on('connect', () => session.setLocalWindowSize(16 << 20));
    const stream = session.request({
      ':method': 'POST',
      ':path': ADS,
      ':authority': target.authority,
      'content-type': 'application/grpc',
      te: 'trailers',
      authorization: `Bearer ${target.tokens[index % target.tokens.length]}`,
    });
    stream.on('error', reject);
    stream.on('close', () => reject(new Error(`stream closed (${stream.rstCode})`)));
    stream.on('data', (chunk) => {
      state.received += chunk.length;
      if (state.received >= 205) resolve();
      for (const w of state.waiters.filter((w) => state.received >= w.bytes)) {
        state.waiters.splice(state.waiters.indexOf(w), 1);
        w.resolve();
      }
    });
    stream.write(REQUEST);
  });
}

async function open(n) {
  const started = performance.now();
  // At most 500 handshakes in flight: the idle figures are about holding connections, not making them.
  for (let i = 0; i < n; i += 500) {
    const batch = Array.from({ length: Math.min(500, n - i) }, (_, j) => sidecar(i + j));
    sidecars.push(...batch);
    await Promise.all(batch.map((s) => s.ready));
  }
  return { seconds: (performance.now() - started) / 1000 };
}

async function storm() {
  const n = sidecars.length;
  for (const s of sidecars) s.session.destroy();
  const started = performance.now();
  sidecars = Array.from({ length: n }, (_, i) => sidecar(i));
  failures = new Map();
  const attempts = await Promise.all(sidecars.map((s) => s.ready));
  return { seconds: (performance.now() - started) / 1000, retried: attempts.filter((a) => a > 0).length, failures: Object.fromEntries(failures) };
}

let armed = Promise.resolve();
function arm(bytes) {
  armed = Promise.all(
    sidecars.map((s) => {
      const goal = s.received + bytes;
      return new Promise((resolve) => s.waiters.push({ bytes: goal, resolve }));
    }),
  );
}

process.on('message', async (message) => {
  let reply;
  if (message.cmd === 'open') {
    target = message;
    reply = await open(message.n);
  } else if (message.cmd === 'storm') {
    reply = await storm();
  } else if (message.cmd === 'arm') {
    arm(message.bytes);
    reply = {};
  } else if (message.cmd === 'wait') {
    await armed;
    reply = {};
  } else if (message.cmd === 'close') {
    for (const s of sidecars) s.session?.destroy();
    sidecars = [];
    reply = {};
  }
  process.send({ id: message.id, ...reply });
});
process.on('disconnect', () => process.exit(0));
