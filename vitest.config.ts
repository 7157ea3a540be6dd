import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // npm installs and node-gyp compile are CPU heavy: two files at a time on a 2-core box.
    maxWorkers: 2,
  },
});
