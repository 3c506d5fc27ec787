import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One scratch TMPDIR for the run, removed at its end; a software WebGPU device for test/webgpu.test.ts
    // when the machine has no GPU (see the files).
    globalSetup: ['test/setup/scratch.ts', 'test/setup/software-gpu.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Tests start worker threads and servers of their own; two files at a time fit 2 cores.
    maxWorkers: 2,
  },
});
