/**
 * What TLS a listener speaks: its minimum version, its TLS 1.2 suites and its key-exchange groups.
 * The default is what Istio's gateways and Mozilla's "intermediate" profile allow: TLS 1.3 (all
 * of whose suites are AEAD with forward secrecy), and TLS 1.2 with ECDHE key exchange and AEAD
 * ciphers only: no static-RSA key exchange (no forward secrecy), no CBC (LUCKY13), no finite-field
 * DHE, no ARIA or CAMELLIA.
 *
 * The same options go on the listener's own context and on every tenant context it hands out by
 * SNI, so that whichever one OpenSSL reads a setting from, it reads the listener's.
 *
 * TLS session resumption is off everywhere. Node/OpenSSL resume a session made under one SNI on a
 * connection with another SNI, without verifying the client certificate against the second
 * tenant's CA (test/tls-isolation.test.ts shows it). Istio's agents do not resume sessions anyway.
 */
import { constants as cryptoConstants } from 'node:crypto';
import type { SecureVersion } from 'node:tls';

export interface TlsProfile {
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  /** TLS 1.2 suites, OpenSSL names, in order of preference. */
  readonly ciphers: readonly string[];
  /** Key-exchange groups, in order of preference. */
  readonly curves: readonly string[];
}

const TLS13_SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];

export const DEFAULT_TLS_PROFILE: TlsProfile = {
  minVersion: 'TLSv1.2',
  ciphers: [
    'ECDHE-ECDSA-AES128-GCM-SHA256',
    'ECDHE-RSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384',
    'ECDHE-RSA-AES256-GCM-SHA384',
    'ECDHE-ECDSA-CHACHA20-POLY1305',
    'ECDHE-RSA-CHACHA20-POLY1305',
  ],
  curves: ['X25519', 'P-256', 'P-384'],
};

export interface TlsServerOptions {
  readonly minVersion: SecureVersion;
  readonly ciphers: string;
  readonly ecdhCurve: string;
  readonly secureOptions: number;
  readonly honorCipherOrder: true;
}

export function tlsServerOptions(profile: TlsProfile = DEFAULT_TLS_PROFILE): TlsServerOptions {
  return {
    minVersion: profile.minVersion,
    ciphers: [...TLS13_SUITES, ...profile.ciphers].join(':'),
    ecdhCurve: profile.curves.join(':'),
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
    honorCipherOrder: true,
  };
}

const STRONG_GROUPS = new Set(['X25519', 'X448', 'P-256', 'P-384', 'P-521', 'prime256v1', 'secp384r1', 'secp521r1']);

/** What is weak in a profile, said so that an operator can act on it; empty when nothing is. */
export function weaknesses(profile: TlsProfile): string[] {
  const found: string[] = [];
  for (const cipher of profile.ciphers) {
    const name = cipher.toUpperCase();
    if (!name.startsWith('ECDHE-')) found.push(`cipher ${cipher}: no ECDHE key exchange, so no forward secrecy`);
    else if (!/-GCM-|CHACHA20-POLY1305/.test(name)) found.push(`cipher ${cipher}: not AEAD (CBC suites are open to LUCKY13-style attacks)`);
  }
  for (const curve of profile.curves) {
    if (!STRONG_GROUPS.has(curve)) found.push(`curve ${curve}: not one of X25519, X448, P-256, P-384, P-521`);
  }
  return found;
}
