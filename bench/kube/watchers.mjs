// The clients of the kube-watch benchmark: N watches on bookinfo pods, as client-go's informers
// hold them: multiplexed over a few HTTP/2 connections (or, straight to the API server, which
// speaks HTTP/1.1 here, one connection each). Driven over IPC by bench/kube-watch.mjs:
//   {cmd: 'open', n, port, servername, ca, token, path, h2}  open n watches; answer when each has its ADDED events
//   {cmd: 'measure', seconds}  count MODIFIED events and their delivery delay for that long
//   {cmd: 'close'}
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

const STREAMS_PER_SESSION = 100;
let closers = [];
let recording;

function onEvents(chunk, state) {
  state.buffer += chunk;
  let newline;
  while ((newline = state.buffer.indexOf('\n')) !== -1) {
    const line = state.buffer.slice(0, newline);
    state.buffer = state.buffer.slice(newline + 1);
    if (line === '') continue;
    const event = JSON.parse(line);
    if (event.type === 'ADDED') state.added++;
    if (event.type === 'MODIFIED' && recording) {
      const changedAt = Date.parse(event.object.metadata.annotations['sandbox.meshgate.io/changed-at']);
      recording.delays.push(Date.now() - changedAt);
    }
  }
}

async function open({ n, port, servername, ca, token, path, h2: useH2 }) {
  const states = [];
  // No SNI when the name is an address (straight to the API server).
  const tls = { ca, rejectUnauthorized: true, ...(isIP(servername) ? {} : { servername }) };
  if (useH2) {
    for (let first = 0; first < n; first += STREAMS_PER_SESSION) {
      const session = http2Connect(`https://127.0.0.1:${port}`, { ...tls, settings: { initialWindowSize: 1 << 20 } });
      session.on('error', () => undefined);
      closers.push(() => session.destroy());
      for (let i = first; i < Math.min(n, first + STREAMS_PER_SESSION); i++) {
        const state = { buffer: '', added: 0 };
        const stream = session.request({ [h2.HTTP2_HEADER_PATH]: path, [h2.HTTP2_HEADER_AUTHORITY]: servername, authorization: `Bearer ${token}` });
        stream.setEncoding('utf8');
        stream.on('data', (chunk) => onEvents(chunk, state));
        stream.on('error', () => undefined);
        states.push(state);
      }
    }
  } else {
    for (let i = 0; i < n; i++) {
      const state = { buffer: '', added: 0 };
      const req = httpsRequest({ ...tls, host: '127.0.0.1', port, path, agent: false, headers: { host: servername, authorization: `Bearer ${token}` } }, (res) => {
        res.setEncoding('utf8');
        res.on('data', (chunk) => onEvents(chunk, state));
        res.on('error', () => undefined);
      });
      req.on('error', () => undefined);
      req.end();
      closers.push(() => req.destroy());
      states.push(state);
    }
  }
  // Every watch starts with an ADDED event per pod (three in bookinfo).
  for (let i = 0; i < 600 && states.some((s) => s.added < 3); i++) await sleep(100);
  return { opened: states.filter((s) => s.added >= 3).length };
}

async function measure({ seconds }) {
  recording = { delays: [] };
  await sleep(seconds * 1000);
  const { delays } = recording;
  recording = undefined;
  delays.sort((a, b) => a - b);
  const pick = (q) => delays[Math.min(delays.length - 1, Math.floor(q * delays.length))];
  return { events: delays.length, p50: pick(0.5), p99: pick(0.99) };
}

process.on('message', async (message) => {
  try {
    if (message.cmd === 'open') process.send(await open(message));
    else if (message.cmd === 'measure') process.send(await measure(message));
    else if (message.cmd === 'close') {
      for (const close of closers.splice(0)) close();
      process.send({ closed: true });
    }
  } catch (err) {
    process.send({ error: String(err?.stack ?? err) });
  }
});
