import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Process and streaming tests measure a child's memory; running files in parallel on a
    // 2-core machine only adds noise, so files run one after another.
    fileParallelism: false,
  },
})
