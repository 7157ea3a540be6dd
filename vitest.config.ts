import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // npm installs and node-gyp compile are CPU heavy: two files at a time on a 2-core box.
    maxWorkers: 2,
    // s3rver (test/helpers/s3.ts) signs ListObjectsV2 continuation tokens with DES, which
    // Node 20's OpenSSL 3 only offers through the legacy provider.
    execArgv: ['--openssl-legacy-provider'],
    // As in the bin: the AWS SDK is pinned to releases that run on Node 20 on purpose, so its
    // "Node >= 22 from January 2027" notice is noise in test output.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  },
});
