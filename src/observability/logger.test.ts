import { describe, expect, it } from 'vitest';
import { redactTarget } from './logger.js';

const JWT = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl';

describe('redactTarget', () => {
  it.each([
    ['/k/s3cr3t/inject/cluster/c', '/k/[redacted]/inject/cluster/c'],
    ['/k/s3cr3t', '/k/[redacted]'],
    ['/k/s3cr3t?timeout=10s', '/k/[redacted]?timeout=10s'],
    ['https://acme.example.com/k/s3cr3t/inject', 'https://acme.example.com/k/[redacted]/inject'],
    ['/inject/cluster/c', '/inject/cluster/c'],
    // A path key wherever a `k` segment puts it, in any spelling a client may send.
    ['//k/s3cr3t/inject', '//k/[redacted]/inject'],
    ['/./k/s3cr3t/inject', '/./k/[redacted]/inject'],
    ['/k/s3cr3t/k/s3cr3t/inject', '/k/[redacted]/k/[redacted]/inject'],
    ['/K/s3cr3t/inject', '/K/[redacted]/inject'],
    ['/%6B/s3cr3t/inject', '/%6B/[redacted]/inject'],
    ['/k%2Fs3cr3t%2Finject', '/k%2F[redacted]%2Finject'],
    ['\\k\\s3cr3t\\inject', '\\k\\[redacted]\\inject'],
    ['/k//s3cr3t/inject', '/k//[redacted]/inject'],
    ['/debug/k/x', '/debug/k/[redacted]'],
    // Tokens: by shape anywhere, and by parameter name in the query.
    [`/debug/syncz?access_token=${JWT}`, '/debug/syncz?access_token=[redacted]'],
    ['/debug/syncz?access_token=opaque-s3cr3t&x=1', '/debug/syncz?access_token=[redacted]&x=1'],
    ['/debug/syncz?x=1&Access-Token=opaque-s3cr3t', '/debug/syncz?x=1&Access-Token=[redacted]'],
    ['/debug/syncz?%74oken=opaque-s3cr3t', '/debug/syncz?%74oken=[redacted]'],
    [`/clusters/${JWT}/api`, '/clusters/[redacted]/api'],
    [`/debug/syncz?proxy=${JWT}`, '/debug/syncz?proxy=[redacted]'],
    ['/debug/syncz?timeout=10s', '/debug/syncz?timeout=10s'],
  ])('%s → %s', (target, logged) => {
    expect(redactTarget(target)).toBe(logged);
  });
});
