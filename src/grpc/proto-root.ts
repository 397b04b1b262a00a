/**
 * Where the Envoy, xDS and Istio protos are read from, for protobufjs and @grpc/proto-loader alike:
 * the API protos @grpc/grpc-js-xds ships (`deps/`), then the repository's own `protos/`.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const require = createRequire(import.meta.url);
/** `@grpc/grpc-js-xds/build/src/index.js` → the package's `deps/`. */
const DEPS = join(dirname(require.resolve('@grpc/grpc-js-xds')), '..', '..', 'deps');
/** src/grpc or dist/grpc → the repository's protos/. */
const OWN = fileURLToPath(new URL('../../protos', import.meta.url));

export const PROTO_INCLUDE_DIRS = [join(DEPS, 'envoy-api'), join(DEPS, 'googleapis'), join(DEPS, 'protoc-gen-validate'), join(DEPS, 'xds'), OWN];

/** A protobufjs root that finds each import in the first include folder that has it. */
export function protoRoot(): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of PROTO_INCLUDE_DIRS) {
      const candidate = join(dir, target);
      try {
        require.resolve(candidate);
        return candidate;
      } catch {
        // not in this folder
      }
    }
    return target;
  };
  return root;
}
