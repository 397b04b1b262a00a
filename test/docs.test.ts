/** The docs change with the code: these fail when they drift apart. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { parseConfig } from '../src/config/load.js';
import { configSchema } from '../src/config/schema.js';
import { ROOT } from './helpers/cli.js';

const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

/** Every field path of the schema: `tenants[].webhook.pathKeyFile`, `listeners.<name>.port`. */
function fieldPaths(schema: z.ZodType, path = '', out = new Set<string>()): Set<string> {
  const def = (schema as unknown as { _zod: { def: Record<string, any> } })._zod.def;
  switch (def.type) {
    case 'object':
      for (const [key, child] of Object.entries(def.shape as Record<string, z.ZodType>)) {
        const next = path === '' ? key : `${path}.${key}`;
        out.add(next);
        fieldPaths(child, next, out);
      }
      break;
    case 'optional':
    case 'default':
    case 'nullable':
    case 'readonly':
    case 'prefault':
      fieldPaths(def.innerType, path, out);
      break;
    case 'array':
      fieldPaths(def.element, `${path}[]`, out);
      break;
    case 'record':
      fieldPaths(def.valueType, `${path}.<name>`, out);
      break;
    case 'pipe':
      fieldPaths(def.in, path, out);
      break;
    case 'union':
      for (const option of def.options as z.ZodType[]) fieldPaths(option, path, out);
      break;
  }
  return out;
}

describe('docs/configuration.md', () => {
  const doc = read('docs/configuration.md');

  it('documents every field of the schema', () => {
    const paths = [...fieldPaths(configSchema)].map((p) => p.replace(/^tenants\[\]\.access\.(webhook|debug|xds)/, 'tenants[].access.<plane>'));
    const missing = [...new Set(paths)].filter((p) => !doc.includes(`\`${p}\``));
    expect(missing).toEqual([]);
  });

  it('has a complete example that the schema accepts', () => {
    const example = /## Complete example[\s\S]*?```yaml\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(example).toBeDefined();
    const config = parseConfig(example ?? '');
    expect(config.tenants.map((t) => t.id)).toEqual(['acme', 'globex']);
    expect(Object.keys(config.listeners)).toEqual(['webhook', 'api', 'xds']);
  });
});

describe('docs/security.md', () => {
  const doc = read('docs/security.md');

  it('names a guarding test for each of the six invariants, and each test file exists', () => {
    for (let n = 1; n <= 6; n++) expect(doc).toMatch(new RegExp(`^### ${n}\\. `, 'm'));
    const referenced = [...doc.matchAll(/`((?:test|src)\/[\w/.-]+\.test\.ts)`/g)].map((m) => m[1] ?? '');
    expect(referenced.length).toBeGreaterThan(10);
    expect(referenced.filter((file) => !existsSync(join(ROOT, file)))).toEqual([]);
  });
});

describe('README.md', () => {
  const readme = read('README.md');

  it('opens with the two commands', () => {
    const head = readme.split('\n').slice(0, 20).join('\n');
    expect(head).toContain('npm ci && npm start');
    expect(head).toContain('npm test');
  });

  it('links the configuration, errors and security docs, and every link resolves', () => {
    for (const doc of ['docs/configuration.md', 'docs/errors.md', 'docs/security.md']) expect(readme).toContain(`](${doc})`);
    const links = [...readme.matchAll(/\]\(((?!https?:)[^)#]+)\)/g)].map((m) => m[1] ?? '');
    expect(links.filter((link) => !existsSync(join(ROOT, link)))).toEqual([]);
  });

  it('CI runs exactly the README commands', () => {
    const ci = read('.ci/run');
    expect(ci).toMatch(/^npm ci$/m);
    expect(ci).toMatch(/^npm test$/m);
  });
});
