/**
 * The decision. First, always: the identity's tenant is the route's tenant. Then the tenant's rules
 * for the plane: the identity must match at least one. No rules for a plane means any identity the
 * plane authenticated for this tenant; an empty list means nobody.
 */
import type { AccessRule } from '../config/schema.js';
import type { Identity } from '../auth/identity.js';
import { MeshgateError } from '../errors.js';

export type Authorizer = (identity: Identity) => void;

export function createAuthorizer(tenant: string, rules: readonly AccessRule[] | undefined): Authorizer {
  const matchers = rules?.map(compileRule);
  return (identity) => {
    if (identity.tenant !== tenant) {
      throw new MeshgateError('MG_ERR_AUTHZ_TENANT_MISMATCH', { detail: `identity of ${identity.tenant} on ${tenant}` });
    }
    if (matchers && !matchers.some((matches) => matches(identity))) {
      throw new MeshgateError('MG_ERR_AUTHZ_DENIED', { detail: `${identity.method} ${identity.subject} matches no rule` });
    }
  };
}

function compileRule(rule: AccessRule): (identity: Identity) => boolean {
  const matches = compileIdentityMatch(rule);
  return (identity) => matches(identity, identity.cluster);
}

/**
 * A rule's identity fields: method, subject and URI globs, and cluster. Which cluster a rule's
 * `cluster` is compared with is the plane's to say: the token's own, or the one a request goes to.
 */
export function compileIdentityMatch(rule: AccessRule): (identity: Identity, cluster: string | undefined) => boolean {
  const subject = rule.subject === undefined ? undefined : compileGlob(rule.subject);
  const uri = rule.uri === undefined ? undefined : compileGlob(rule.uri);
  return (identity, cluster) =>
    (rule.method === undefined || rule.method === identity.method) &&
    (rule.cluster === undefined || rule.cluster === cluster) &&
    (subject === undefined || subject.test(identity.subject)) &&
    (uri === undefined || identity.uris.some((u) => uri.test(u)));
}

/** `*` matches any run of characters; everything else is literal. */
export function compileGlob(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 's');
}
