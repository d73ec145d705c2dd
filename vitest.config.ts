import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Property and fuzz tests are CPU-bound; two cores here.
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
