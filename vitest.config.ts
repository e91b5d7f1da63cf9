import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'packages/*/src/**/*.test.ts', 'apps/*/test/**/*.test.ts', 'tools/*/test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**', '**/build/**'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Native addons and worker threads: keep to the two cores this machine has.
    maxWorkers: 2,
    server: {
      deps: {
        // The packages under test are loaded by Node itself from their built dist/, exactly as a
        // user gets them, so `require()` inside core and `import` in a test share one instance.
        external: [/\/packages\/[^/]+\/dist\//, /\/apps\/[^/]+\/dist\//],
      },
    },
  },
});
