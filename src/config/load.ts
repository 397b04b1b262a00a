/**
 * Loading a config: YAML text → schema (every problem reported at once, with its path) → the files
 * it names (read and checked) → a frozen, validated config.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { configSchema, type Config } from './schema.js';
import { ConfigError, type ConfigIssue } from './issues.js';
import { readConfigFiles, type ConfigFiles } from './files.js';

export interface LoadedConfig {
  readonly config: Readonly<Config>;
  readonly files: ConfigFiles;
  /** Absolute path of the config file. */
  readonly source: string;
}

/** Parses and validates config text. File references are not read here. */
export function parseConfig(text: string, source = 'config'): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => ({ path: [], message: e.message.split('\n')[0] ?? e.message })),
    );
  }
  const result = configSchema.safeParse(doc.toJS());
  if (!result.success) {
    const issues: ConfigIssue[] = result.error.issues.map((issue) => ({ path: issue.path, message: issue.message }));
    throw new ConfigError(source, issues);
  }
  return result.data;
}

/** Reads, validates and checks a config file and everything it names. Throws ConfigError. */
export function loadConfig(path: string): LoadedConfig {
  const source = resolve(path);
  let text: string;
  try {
    text = readFileSync(source, 'utf8');
  } catch (err) {
    throw new ConfigError(source, [{ path: [], message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }]);
  }
  const parsed = parseConfig(text, source);
  const { config, files, issues } = readConfigFiles(parsed, dirname(source));
  if (issues.length > 0) throw new ConfigError(source, issues);
  return { config: deepFreeze(config), files, source };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
