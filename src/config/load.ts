/**
 * Loading a config: YAML text → schema (every problem reported at once, with its path) → the files
 * it names (read and checked) → a frozen, validated config.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { configSchema, type Config } from './schema.js';
import { ConfigError, type ConfigIssue } from './issues.js';
import { DISK, readConfigFiles, type ConfigFiles, type FileReader } from './files.js';

export interface LoadedConfig {
  readonly config: Readonly<Config>;
  readonly files: ConfigFiles;
  /** Absolute path of the config file. */
  readonly source: string;
}

/**
 * Tenants from somewhere other than the file (MeshTenant resources), added to the file's own
 * settings, with the reader of their file references (Secret keys).
 */
export interface TenantOverlay {
  readonly tenants: readonly unknown[];
  /** The reader of one of these tenants' references (the file's own settings are read from disk). */
  readonly reader: (tenant: unknown) => FileReader;
}

/** Parses and validates config text. File references are not read here. */
export function parseConfig(text: string, source = 'config', overlay?: TenantOverlay): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => ({ path: [], message: e.message.split('\n')[0] ?? e.message })),
    );
  }
  let raw: unknown;
  try {
    // An alias to no anchor, or too many aliases (a "billion laughs"), fails only here.
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(source, [{ path: [], message: err instanceof Error ? err.message : String(err) }]);
  }
  if (isRecord(raw) && raw.tenantSource !== undefined && raw.tenants !== undefined) {
    throw new ConfigError(source, [{ path: ['tenants'], message: 'with tenantSource.kubernetes, tenants come from MeshTenant resources: leave "tenants" out' }]);
  }
  if (overlay !== undefined && isRecord(raw)) raw.tenants = [...overlay.tenants];
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issues: ConfigIssue[] = result.error.issues.map((issue) => ({ path: issue.path, message: issue.message }));
    throw new ConfigError(source, issues);
  }
  return result.data;
}

/** Reads, validates and checks a config file and everything it names. Throws ConfigError. */
export function loadConfig(path: string, overlay?: TenantOverlay): LoadedConfig {
  const source = resolve(path);
  let text: string;
  try {
    text = readFileSync(source, 'utf8');
  } catch (err) {
    throw new ConfigError(source, [{ path: [], message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }]);
  }
  return loadConfigText(text, source, overlay);
}

/** As loadConfig, for config text that `source` names; relative file paths are read from its folder. */
export function loadConfigText(text: string, source: string, overlay?: TenantOverlay): LoadedConfig {
  const parsed = parseConfig(text, source, overlay);
  const readerFor = (tenant: number | undefined): FileReader =>
    tenant === undefined || overlay === undefined ? DISK : overlay.reader(overlay.tenants[tenant]);
  const { config, files, issues } = readConfigFiles(parsed, dirname(source), readerFor);
  if (issues.length > 0) throw new ConfigError(source, issues);
  return { config: deepFreeze(config), files, source };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
