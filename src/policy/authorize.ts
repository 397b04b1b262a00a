/**
 * The decision. First, always: the identity's tenant is the route's tenant. Then the tenant's rules
 * for the plane: the identity must match at least one. No rules for a plane means any identity the
 * plane authenticated for this tenant; an empty list means nobody.
 *
 * An allowed request is told which rule allowed it, for its access-log line: `access.<plane>[i]`,
 * the first matching rule by its position in the tenant's list, or `default` when the plane has no
 * rules.
 */
import type { AccessRule, PlaneName } from '../config/schema.js';
import type { Identity } from '../auth/identity.js';
import { MeshgateError } from '../errors.js';

/** Throws unless allowed; returns the rule that allowed (see `ruleName`). */
export type Authorizer = (identity: Identity) => string;

/** What an allow line's `rule` says when the plane has no rules: every identity of the tenant. */
export const DEFAULT_RULE = 'default';

/** A rule as the access log names it: its place in the tenant's `access.<plane>` list. */
export function ruleName(plane: string, index: number): string {
  return `access.${plane}[${index}]`;
}

/** `plane` names the rules in what it returns (`access.<plane>[i]`). */
export function createAuthorizer(tenant: string, rules: readonly AccessRule[] | undefined, plane: PlaneName): Authorizer {
  const matchers = rules?.map(compileRule);
  return (identity) => {
    if (identity.tenant !== tenant) {
      throw new MeshgateError('MG_ERR_AUTHZ_TENANT_MISMATCH', { detail: `identity of ${identity.tenant} on ${tenant}` });
    }
    if (!matchers) return DEFAULT_RULE;
    const index = matchers.findIndex((matches) => matches(identity));
    if (index === -1) {
      throw new MeshgateError('MG_ERR_AUTHZ_DENIED', { detail: `${identity.method} ${identity.subject} matches no rule` });
    }
    return ruleName(plane, index);
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
