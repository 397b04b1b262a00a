/**
 * Property: a path key or a token never survives redactTarget, wherever it stands in the target
 * and however the separators around it are spelled (fast-check, bounded runs).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { redactTarget } from './logger.js';

const SECRET = fc.stringMatching(/^[A-Za-z0-9_-]{24,40}$/);
const SEGMENT = fc.stringMatching(/^[a-z0-9_.-]{0,10}$/).filter((s) => s.toLowerCase() !== 'k');
const SEPARATOR = fc.constantFrom('/', '//', '/./', '\\', '%2F', '%2f', '%5C');
const K = fc.constantFrom('k', 'K', '%6B', '%6b');

describe('redactTarget', () => {
  it('redacts a path key after any spelling of a k segment, at any depth', () => {
    fc.assert(
      fc.property(fc.array(SEGMENT, { maxLength: 4 }), SEPARATOR, K, SEPARATOR, SECRET, fc.array(SEGMENT, { maxLength: 4 }), (before, s1, k, s2, key, after) => {
        const target = `/${before.join('/')}${s1}${k}${s2}${key}/${after.join('/')}`;
        expect(redactTarget(target)).not.toContain(key);
      }),
      { numRuns: 500 },
    );
  });

  it('redacts a JWT anywhere, and a credential-named query parameter', () => {
    const jwt = fc.tuple(SECRET, SECRET, SECRET).map(([a, b, c]) => `eyJ${a}.${b}.${c}`);
    fc.assert(
      fc.property(fc.array(SEGMENT, { maxLength: 3 }), jwt, fc.constantFrom('access_token', 'token', 'Access-Token', 'id_token', 'key'), SECRET, (path, token, name, opaque) => {
        const target = `/${path.join('/')}/${token}?x=1&${name}=${opaque}&proxy=${token}`;
        const logged = redactTarget(target);
        expect(logged).not.toContain(token);
        expect(logged).not.toContain(opaque);
      }),
      { numRuns: 500 },
    );
  });
});
