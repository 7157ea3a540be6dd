// Types for the parts of s3rver (which ships none) that the test helper and bench use.
declare module 's3rver' {
  import type { Server } from 'node:http';

  interface S3rverOptions {
    address?: string;
    port?: number;
    silent?: boolean;
    directory: string;
    resetOnClose?: boolean;
    allowMismatchedSignatures?: boolean;
    vhostBuckets?: boolean;
    configureBuckets?: { name: string; configs?: (string | Buffer)[] }[];
  }

  class S3rver {
    constructor(options: S3rverOptions);
    run(): Promise<{ address: string; port: number; family: string }>;
    close(): Promise<void>;
    httpServer: Server | undefined;
    /** winston logger; `silent` stops its "no transports" warnings after close. */
    logger: { silent: boolean };
    store: { putBucket(name: string): Promise<unknown>; getBucket(name: string): Promise<unknown> };
  }

  export default S3rver;
}
