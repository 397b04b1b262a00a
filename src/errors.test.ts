import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, MeshgateError, toMeshgateError } from './errors.js';

const root = fileURLToPath(new URL('..', import.meta.url));

function testFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'node_modules' ? [] : testFiles(path);
    return name.endsWith('.test.ts') && !path.endsWith('errors.test.ts') ? [path] : [];
  });
}

/** Codes that no client can provoke, each with the reason and the unit test that covers it. */
const UNREACHABLE_FROM_OUTSIDE: Record<string, string> = {
  // Identities are only ever verified within the route's tenant; src/policy/authorize.test.ts
  // feeds the authorizer a foreign identity directly.
  MG_ERR_AUTHZ_TENANT_MISMATCH: 'src/policy/authorize.test.ts',
  // A defect by definition; rendered like any other code.
  MG_ERR_INTERNAL: 'src/errors.test.ts',
};

/** A test names a code as a string (`'MG_ERR_…'`) or as the head of a gRPC message (`/^MG_ERR_…: /`). */
const quotes = (tests: string, code: string): boolean => tests.includes(`'${code}'`) || tests.includes(`/^${code}: /`);

describe('the error catalogue', () => {
  const documented = readFileSync(join(root, 'docs', 'errors.md'), 'utf8');
  const rows = [...documented.matchAll(/^\| `(MG_ERR_[A-Z_]+)` \| (\d{3}) \| (\d+) \|/gm)].map((m) => ({
    code: m[1] ?? '',
    status: Number(m[2]),
    grpc: Number(m[3]),
  }));

  it('is documented in docs/errors.md, code for code, with the same statuses', () => {
    expect(rows.map((r) => r.code).sort()).toEqual(Object.keys(ERROR_CODES).sort());
    for (const row of rows) {
      const spec = ERROR_CODES[row.code as keyof typeof ERROR_CODES];
      expect({ code: row.code, status: row.status, grpc: row.grpc }).toEqual({ code: row.code, status: spec.status, grpc: spec.grpc });
    }
  });

  it('has a test that provokes every code', () => {
    const tests = testFiles(join(root, 'src')).concat(testFiles(join(root, 'test'))).map((f) => readFileSync(f, 'utf8')).join('\n');
    const untested = Object.keys(ERROR_CODES).filter((code) => !(code in UNREACHABLE_FROM_OUTSIDE) && !quotes(tests, code));
    expect(untested).toEqual([]);
  });

  it('keeps the client message apart from the logged detail and cause', () => {
    const cause = new Error('ECONNREFUSED 10.0.0.1:15017');
    const error = new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { detail: 'dial istiod.acme-cp.svc', cause });
    expect(error.message).toBe('upstream is unavailable');
    expect([error.status, error.grpcStatus, error.detail, error.cause]).toEqual([503, 14, 'dial istiod.acme-cp.svc', cause]);
  });

  it('turns anything unexpected into MG_ERR_INTERNAL, keeping the original as the cause', () => {
    const bug = new TypeError('undefined is not a function');
    const error = toMeshgateError(bug);
    expect([error.code, error.status, error.message, error.cause]).toEqual(['MG_ERR_INTERNAL', 500, 'internal error', bug]);
  });
});
