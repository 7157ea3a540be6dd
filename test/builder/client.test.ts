import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient } from '../../lib/builder/client.js';

// A TCP server that drops every connection: a builder that is up but broken. (A real builder
// cannot be made to do this on demand.)
let server: Server;
let connections = 0;
beforeAll(async () => {
  server = createServer((socket) => {
    connections += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

describe('builder client', () => {
  it('a health probe is asked once, never retried (a dead builder is skipped, not waited for)', async () => {
    const { port } = server.address() as { port: number };
    const client = createBuilderClient({ url: `http://127.0.0.1:${port}`, retries: 2 });
    connections = 0;
    await expect(client.health()).rejects.toMatchObject({ code: 'ERR_BUILDER_UNREACHABLE' });
    expect(connections).toBe(1);
    // Other GETs keep their retries.
    connections = 0;
    await expect(client.getBuild('x')).rejects.toMatchObject({ code: 'ERR_BUILDER_UNREACHABLE' });
    expect(connections).toBe(3);
  });
});
