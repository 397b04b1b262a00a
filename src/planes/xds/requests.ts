/**
 * What an xds caller may ask of istiod, beyond who it is:
 *  - which gRPC methods its rules grant (a certificate caller rides on meshgate's istiod token, so
 *    it gets CreateCertificate only from a rule that names it);
 *  - which debug resources its requests name: `istio.io/debug/<endpoint>` type URLs, and the
 *    resources of `istio.io/debug`, pass the same allowlist as the debug plane's `/debug/…` paths,
 *    whoever the caller is.
 */
import type { Identity } from '../../auth/identity.js';
import type { XdsAccessRule } from '../../config/schema.js';
import { MeshgateError } from '../../errors.js';
import type { DiscoveryRequestFields } from '../../grpc/discovery-request.js';
import { compileIdentityMatch, DEFAULT_RULE, ruleName } from '../../policy/authorize.js';
import { checkDebugEndpoint } from '../debug/endpoints.js';

/** Throws unless the method is granted; returns the rule that granted it (`access.xds[i]`, or `default` without rules). */
export type MethodPolicy = (identity: Identity, method: string) => string;

export function createMethodPolicy(rules: readonly XdsAccessRule[] | undefined): MethodPolicy {
  const compiled = rules?.map((rule) => ({ matches: compileIdentityMatch(rule), methods: rule.methods }));
  const grants = (methods: readonly string[] | undefined, identity: Identity, name: string): boolean =>
    methods === undefined ? name !== 'CreateCertificate' || identity.method === 'token' : methods.includes(name);
  return (identity, method) => {
    const name = method.slice(method.lastIndexOf('/') + 1);
    if (!compiled && grants(undefined, identity, name)) return DEFAULT_RULE;
    const index = compiled?.findIndex((rule) => rule.matches(identity, identity.cluster) && grants(rule.methods, identity, name)) ?? -1;
    if (index !== -1) return ruleName('xds', index);
    throw new MeshgateError('MG_ERR_AUTHZ_DENIED', {
      message: `${name} is not granted to this caller${name === 'CreateCertificate' && identity.method !== 'token' ? ': a certificate caller needs a rule naming it' : ''}`,
      detail: `${identity.method} ${identity.subject} may not call ${name}`,
    });
  };
}

const DEBUG_TYPE = 'istio.io/debug';

/** Throws unless every debug resource the request names is allowed; other type URLs pass. */
export function checkDebugRequest(request: DiscoveryRequestFields, allowed: ReadonlySet<string>): void {
  const { typeUrl } = request;
  if (typeUrl.startsWith(`${DEBUG_TYPE}/`)) {
    checkDebugEndpoint(typeUrl.slice(DEBUG_TYPE.length + 1), undefined, allowed, typeUrl);
  } else if (typeUrl === DEBUG_TYPE) {
    for (const resource of request.resourceNames) {
      const question = resource.indexOf('?');
      const endpoint = question === -1 ? resource : resource.slice(0, question);
      checkDebugEndpoint(endpoint === '' ? undefined : endpoint, question === -1 ? undefined : resource.slice(question + 1), allowed, resource);
    }
  }
}
