import { defineConfig } from 'vitest/config';

// `npm run test:interop`: the real Istio and Kubernetes programs that interop/build.sh built.
// One topology for the whole run, so one file at a time, and generous limits for real programs.
export default defineConfig({
  test: {
    include: ['test/interop/**/*.test.ts'],
    environment: 'node',
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 600_000,
  },
});
