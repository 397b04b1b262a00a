#!/usr/bin/env node
/**
 * meshgate's command line:
 *
 *   meshgate serve   --config FILE      run the gateway (SIGHUP reloads, SIGTERM drains)
 *   meshgate check   --config FILE      validate a config and everything it names
 *   meshgate check   --tenants FILE     validate MeshTenant resources (with --config: against it)
 *   meshgate crd                        print the MeshTenant CustomResourceDefinition
 *   meshgate sandbox [--dir D] [--port-base P]
 *   meshgate certs   ca | server | client …
 *   meshgate xds     --server HOST:PORT …     (an ADS request or a CSR, printed)
 *   meshgate kubeconfig --tenant T --cluster C …   (a kubeconfig through meshgate)
 *   meshgate agent   --server wss://HOST:PORT --cluster C …   (in a mesh cluster meshgate cannot dial)
 */
import { readFileSync } from 'node:fs';
import { runAgent } from './agent.js';
import { runCerts } from './certs.js';
import { runCheck, runCrd, runServe } from './serve.js';
import { runSandbox } from './sandbox.js';
import { runXds } from './xds.js';
import { runKubeconfig } from './kubeconfig.js';
import { UsageError } from './args.js';

const USAGE = `usage: meshgate <command> [options]

commands:
  serve   --config FILE                 run the gateway
  check   --config FILE                 validate a config; prints every problem and exits 1 if any
  check   --tenants FILE [--config F]   validate MeshTenant YAML (and Secrets in it) as meshgate would
  crd                                   print the MeshTenant CustomResourceDefinition (kubectl apply -f -)
  sandbox [--dir D] [--port-base P]     run meshgate with two stand-in tenants (what npm start runs)
  certs   ca|server|client …            issue certificates (meshgate certs --help)
  xds     --server HOST:PORT …          one ADS request or CSR through meshgate (meshgate xds --help)
  kubeconfig --tenant T --cluster C …   a kubeconfig that reaches a tenant cluster through meshgate
  agent   --server wss://H:P --cluster C …   tunnel a mesh cluster's API server to meshgate (meshgate agent --help)

options:
  -h, --help       this text
  -v, --version    print the version
`;

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return runServe(rest);
    case 'check':
      return runCheck(rest);
    case 'crd':
      return runCrd();
    case 'sandbox':
      return runSandbox(rest);
    case 'certs':
      return runCerts(rest);
    case 'xds':
      return runXds(rest);
    case 'kubeconfig':
      return runKubeconfig(rest);
    case 'agent':
      return runAgent(rest);
    case '-v':
    case '--version':
      console.log(version());
      return 0;
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`meshgate: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== 0) process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(`meshgate: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`meshgate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
