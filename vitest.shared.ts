// Shared vitest settings: every package's vitest.config.ts merges these, and the root config
// lists the packages as projects, so `pnpm test` at the root runs them all in one process.
// The "@iovalink/source" condition makes workspace imports resolve to src/ (no build needed).
import { defineConfig } from 'vitest/config';

export const sourceCondition = '@iovalink/source';

export default defineConfig({
  resolve: { conditions: [sourceCondition, 'module', 'node', 'import', 'default'] },
  ssr: { resolve: { conditions: [sourceCondition, 'module', 'node', 'import', 'default'] } },
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    testTimeout: 30_000,
  },
});
