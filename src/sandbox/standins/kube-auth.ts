/**
 * Who a request to a stand-in Kubernetes API server is, as kube-apiserver decides it: a client
 * certificate verified against the cluster's client CA (user = subject CN, groups = subject O
 * values), else a bearer token verified with the cluster's issuer (a service account's groups come
 * from its `kubernetes.io` claim); then `Impersonate-*` headers, honoured only for the configured
 * impersonators. TokenReview and SelfSubjectReview answer from the same code.
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { createLocalJWKSet, jwtVerify, type JWTPayload } from 'jose';
import type { Issuer } from '../issuer.js';
import { kubeStatus } from './kube-documents.js';

export interface KubeUser {
  readonly username: string;
  readonly uid?: string;
  readonly groups: readonly string[];
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}

export type Impersonation = { readonly user: KubeUser } | { readonly code: number; readonly status: object };

const AUTHENTICATED = 'system:authenticated';
const CREDENTIAL_ID = 'authentication.kubernetes.io/credential-id';

/** The authenticated user, or undefined when the request carries no valid credential. */
export async function authenticate(req: IncomingMessage, issuer: Issuer): Promise<KubeUser | undefined> {
  const socket = req.socket as Partial<TLSSocket>;
  if (socket.authorized === true && socket.getPeerCertificate) {
    const subject = socket.getPeerCertificate().subject as Record<string, unknown> | undefined;
    const commonName = values(subject?.CN)[0];
    if (commonName) return { username: commonName, groups: unique([...values(subject?.O), AUTHENTICATED]) };
  }
  const token = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
  if (token === undefined) return undefined;
  const verified = await verifyToken(issuer, token);
  return 'user' in verified ? verified.user : undefined;
}

/** Verifies a token as the API server's service-account authenticator would, any audience unless some are given. */
export async function verifyToken(
  issuer: Issuer,
  token: string,
  audiences: readonly string[] = [],
): Promise<{ user: KubeUser; audiences: string[] } | { error: string }> {
  let payload: JWTPayload;
  try {
    payload = (await jwtVerify(token, createLocalJWKSet(issuer.jwks()), { issuer: issuer.issuer })).payload;
  } catch (error) {
    return { error: `invalid bearer token, ${error instanceof Error ? error.message : String(error)}` };
  }
  const tokenAudiences = typeof payload.aud === 'string' ? [payload.aud] : (payload.aud ?? []);
  const granted = audiences.length === 0 ? tokenAudiences : tokenAudiences.filter((a) => audiences.includes(a));
  if (granted.length === 0 && audiences.length > 0) {
    return { error: `invalid bearer token, token audiences ${JSON.stringify(tokenAudiences)} is invalid for the target audiences` };
  }
  const claim = payload['kubernetes.io'];
  const sa = typeof claim === 'object' && claim !== null ? (claim as { namespace?: unknown; serviceaccount?: { uid?: unknown } }) : {};
  const namespace = typeof sa.namespace === 'string' ? sa.namespace : undefined;
  const uid = typeof sa.serviceaccount?.uid === 'string' ? sa.serviceaccount.uid : undefined;
  const user: KubeUser = {
    username: payload.sub ?? '',
    ...(uid === undefined ? {} : { uid }),
    groups: [...(namespace === undefined ? [] : serviceAccountGroups(namespace)), AUTHENTICATED],
    ...(payload.jti === undefined ? {} : { extra: { [CREDENTIAL_ID]: [`JTI=${payload.jti}`] } }),
  };
  return { user, audiences: granted };
}

/**
 * Applies `Impersonate-User`, `Impersonate-Group` (repeatable), `Impersonate-Uid` and
 * `Impersonate-Extra-*`: 403 unless `user` may impersonate, 400 for groups or extras without a user.
 */
export function impersonate(req: IncomingMessage, user: KubeUser, impersonators: readonly string[]): Impersonation {
  const headers: [string, string][] = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] ?? '').toLowerCase();
    if (name.startsWith('impersonate-')) headers.push([name, req.rawHeaders[i + 1] ?? '']);
  }
  if (headers.length === 0) return { user };
  const username = headers.find(([name]) => name === 'impersonate-user')?.[1];
  const groups = headers.filter(([name]) => name === 'impersonate-group').map(([, value]) => value);
  const uid = headers.find(([name]) => name === 'impersonate-uid')?.[1];
  if (username === undefined) {
    const message = `requested impersonation of ${headers.map(([name]) => name).join(', ')} without impersonating a user`;
    return { code: 400, status: kubeStatus(400, 'BadRequest', message) };
  }
  if (!impersonators.includes(user.username)) {
    const message =
      `users "${username}" is forbidden: User "${user.username}" cannot impersonate resource "users" in API group "" ` + 'at the cluster scope';
    return { code: 403, status: kubeStatus(403, 'Forbidden', message, { name: username, kind: 'users' }) };
  }
  const extra: Record<string, string[]> = {};
  for (const [name, value] of headers) {
    if (!name.startsWith('impersonate-extra-')) continue;
    const key = percentDecoded(name.slice('impersonate-extra-'.length));
    extra[key] = [...(extra[key] ?? []), value];
  }
  const serviceAccount = /^system:serviceaccount:([^:]+):[^:]+$/.exec(username);
  const impersonated: KubeUser = {
    username,
    ...(uid === undefined ? {} : { uid }),
    groups: unique([...groups, ...(serviceAccount?.[1] ? serviceAccountGroups(serviceAccount[1]) : []), AUTHENTICATED]),
    ...(Object.keys(extra).length > 0 ? { extra } : {}),
  };
  return { user: impersonated };
}

/** Answers a TokenReview (authentication.k8s.io/v1) for the token in its spec. */
export async function reviewToken(issuer: Issuer, review: unknown): Promise<object> {
  const spec = (typeof review === 'object' && review !== null ? (review as { spec?: unknown }).spec : undefined) ?? {};
  const { token, audiences } = spec as { token?: unknown; audiences?: unknown };
  const wanted = Array.isArray(audiences) ? audiences.filter((a): a is string => typeof a === 'string') : [];
  const verified = typeof token === 'string' && token !== '' ? await verifyToken(issuer, token, wanted) : { error: 'no token given' };
  const status =
    'user' in verified
      ? { authenticated: true, user: verified.user, audiences: verified.audiences }
      : { authenticated: false, user: {}, error: verified.error };
  return { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec, status };
}

/** What `kubectl auth whoami` shows. */
export function selfSubjectReview(user: KubeUser): object {
  return {
    kind: 'SelfSubjectReview',
    apiVersion: 'authentication.k8s.io/v1',
    metadata: { creationTimestamp: null },
    status: { userInfo: user },
  };
}

function serviceAccountGroups(namespace: string): string[] {
  return ['system:serviceaccounts', `system:serviceaccounts:${namespace}`];
}

/** A certificate subject field: Node gives one value as a string, several as an array. */
function values(field: unknown): string[] {
  if (typeof field === 'string') return [field];
  return Array.isArray(field) ? field.filter((v): v is string => typeof v === 'string') : [];
}

/** Impersonate-Extra-* keys are percent-encoded; a malformed one is kept as it came. */
function percentDecoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function unique(items: readonly string[]): string[] {
  return [...new Set(items)];
}
