/**
 * The SSRF guard (issue 15.7): link-local never, loopback/private only when allowed, checked at
 * connect time, redirects included. No traffic leaves loopback: the link-local cases use a
 * resolver that answers 169.254.169.254 and a connect that fails the test if it is ever called.
 */
import { createServer as createHttpServer, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { createConnection as netConnect, createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { downloadToFile } from '../../lib/builder/client.js';
import { classifyAddress, createAddressGuard, type Connector } from '../../lib/builder/network.js';
import { TEST_UID_RANGES, hostTargetSpec, startTestBuilder, type TestBuilder } from '../helpers/builder.js';
import { tempDir } from '../helpers/packages.js';

const never: Connector = () => {
  throw new Error('connect must never be called for a refused address');
};

/** A TCP listener that counts connections (it must see none). */
async function countingListener(host: string): Promise<{ port: number; connections: () => number; stop: () => Promise<void> }> {
  let count = 0;
  const server = createServer((socket) => {
    count += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return { port: (server.address() as AddressInfo).port, connections: () => count, stop: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function httpServer(handler: Parameters<typeof createHttpServer>[1]): Promise<{ url: string; stop: () => Promise<void> }> {
  const server: Server = createHttpServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe('address classes', () => {
  it('classifies the forms an attacker would try', () => {
    expect(classifyAddress('169.254.169.254')).toBe('link-local');
    expect(classifyAddress('::ffff:169.254.169.254')).toBe('link-local');
    expect(classifyAddress('::ffff:a9fe:a9fe')).toBe('link-local');
    expect(classifyAddress('64:ff9b::a9fe:a9fe')).toBe('link-local');
    expect(classifyAddress('fe80::1')).toBe('link-local');
    expect(classifyAddress('0.0.0.0')).toBe('unspecified');
    expect(classifyAddress('::')).toBe('unspecified');
    expect(classifyAddress('127.0.0.1')).toBe('loopback');
    expect(classifyAddress('::1')).toBe('loopback');
    expect(classifyAddress('::ffff:127.0.0.1')).toBe('loopback');
    expect(classifyAddress('10.1.2.3')).toBe('private');
    expect(classifyAddress('100.100.100.200')).toBe('private');
    expect(classifyAddress('fd00::1')).toBe('unique-local');
    expect(classifyAddress('::a9fe:a9fe')).toBe('reserved');
    expect(classifyAddress('93.184.216.34')).toBe('public');
    expect(classifyAddress('2606:2800:220:1::1')).toBe('public');
  });

  it('sees through the IPv4 spellings WHATWG URL normalizes', async () => {
    const guard = createAddressGuard({ resolve: async () => { throw new Error('no DNS for literals'); } });
    for (const url of ['http://0x7f.1/', 'http://2130706433/', 'http://017700000001/', 'http://[::ffff:7f00:1]/', 'http://0xa9.0xfe.0xa9.0xfe/', 'http://0/']) {
      await expect(guard.check(url)).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED' });
    }
  });

  it('keeps link-local refused even when listed, and allows listed ranges and names', async () => {
    const guard = createAddressGuard({ allow: ['169.254.0.0/16', '10.0.0.0/8', 'minio.internal', '*.lan'], resolve: async (host) => [{ address: host === 'meta.lan' ? '169.254.169.254' : '10.0.0.5', family: 4 }] });
    expect(guard.warnings.join()).toContain('169.254.0.0/16');
    await expect(guard.check('http://169.254.169.254/')).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: { class: 'link-local' } });
    await expect(guard.check('http://meta.lan/')).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: { class: 'link-local' } });
    await expect(guard.check('http://10.9.8.7/')).resolves.toHaveLength(1);
    await expect(guard.check('http://minio.internal/')).resolves.toHaveLength(1);
    await expect(guard.check('http://s3.lan/')).resolves.toHaveLength(1);
    await expect(createAddressGuard({ resolve: async () => [{ address: '10.0.0.5', family: 4 }] }).check('http://minio.internal/')).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: { class: 'private' } });
  });
});

describe('downloads through the guard', () => {
  let root: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    root = await tempDir('bd-network-');
  });
  afterAll(async () => {
    await root.remove();
  });

  it('refuses a name that resolves to the metadata address without ever connecting', async () => {
    const asked: string[] = [];
    let connects = 0;
    const guard = createAddressGuard({
      resolve: async (host) => {
        asked.push(host);
        return [{ address: '169.254.169.254', family: 4 }];
      },
      connect: (...args) => {
        connects += 1;
        return never(...args);
      },
    });
    await expect(downloadToFile('http://metadata.test/latest/meta-data/', path.join(root.dir, 'meta'), { guard })).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED' });
    expect(asked).toEqual(['metadata.test']);
    expect(connects).toBe(0);
  });

  it('allows a host by name (it resolves to loopback) and connects to the checked address', async () => {
    const server = await httpServer((_request, response) => response.end('hello'));
    const port = new URL(server.url).port;
    const guard = createAddressGuard({ allow: ['sources.test'], resolve: async () => [{ address: '127.0.0.1', family: 4 }] });
    try {
      const fetched = await downloadToFile(`http://sources.test:${port}/a.tgz`, path.join(root.dir, 'named'), { guard });
      expect(fetched.size).toBe(5);
      // The same server by address is not allowed: only the name is listed.
      await expect(downloadToFile(`${server.url}/a.tgz`, path.join(root.dir, 'literal'), { guard })).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED' });
    } finally {
      await server.stop();
    }
  });

  it('follows no redirect into a refused address (literal or name), and never connects there', async () => {
    const target = await countingListener('127.0.0.2');
    let connects = 0;
    const server = await httpServer((request, response) => {
      const location = request.url === '/to-literal' ? `http://127.0.0.2:${target.port}/x` : request.url === '/to-metadata' ? 'http://metadata.test/latest/' : '/ok';
      if (request.url === '/ok') return response.end('fine');
      response.writeHead(302, { location }).end();
    });
    const guard = createAddressGuard({
      allow: ['127.0.0.1'],
      resolve: async () => [{ address: '169.254.169.254', family: 4 }],
      connect: (options, secure) => {
        connects += 1;
        if (options.host !== '127.0.0.1') return never(options, secure);
        return createServerConnect(options);
      },
    });
    try {
      await expect(downloadToFile(`${server.url}/redirect-ok`, path.join(root.dir, 'ok'), { guard })).resolves.toMatchObject({ size: 4 });
      const connectsBefore = connects;
      await expect(downloadToFile(`${server.url}/to-literal`, path.join(root.dir, 'lit'), { guard })).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: { class: 'loopback' } });
      await expect(downloadToFile(`${server.url}/to-metadata`, path.join(root.dir, 'meta'), { guard })).rejects.toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: { class: 'link-local' } });
      // One connection each, to the allowed server; none to the targets.
      expect(connects - connectsBefore).toBe(2);
      expect(target.connections()).toBe(0);
    } finally {
      await server.stop();
      await target.stop();
    }
  });
});

/** The default http connect (net) for the redirect test's allowed hops. */
function createServerConnect(options: Parameters<Connector>[0]): ReturnType<Connector> {
  return netConnect(options as never);
}

describe('the builder API', () => {
  let builder: TestBuilder;
  beforeAll(async () => {
    // The default: no allowSources at all (the test helper allows 127.0.0.1; this one does not).
    builder = await startTestBuilder({ uids: TEST_UID_RANGES.network, addressGuard: createAddressGuard() });
  }, 60_000);
  afterAll(async () => {
    await builder?.stop();
  });

  it('answers 403 ERR_SOURCE_REFUSED for a loopback source, and the listener sees no connection', async () => {
    const listener = await countingListener('127.0.0.1');
    try {
      const response = await fetch(`${builder.url}/v1/builds`, {
        method: 'POST',
        headers: { authorization: `Bearer ${builder.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ source: { url: `http://127.0.0.1:${listener.port}/app.tgz`, sha256: 'a'.repeat(64) }, target: hostTargetSpec() }),
      });
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('ERR_SOURCE_REFUSED');
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(listener.connections()).toBe(0);
    } finally {
      await listener.stop();
    }
  });

  it('refuses a link-local output URL before fetching anything', async () => {
    const listener = await countingListener('127.0.0.1');
    try {
      const error = await builder.client.createBuild({
        source: { url: `http://127.0.0.1:${listener.port}/app.tgz`, sha256: 'a'.repeat(64) },
        target: hostTargetSpec(),
        output: { url: 'http://169.254.169.254/latest/api/token' },
      }, { idempotencyKey: `output-${Date.now()}` }).catch((failure: unknown) => failure);
      expect(error).toMatchObject({ code: 'ERR_SOURCE_REFUSED', details: expect.objectContaining({ status: 403 }) });
      expect(String((error as Error).message)).toContain('output URL');
      expect(listener.connections()).toBe(0);
    } finally {
      await listener.stop();
    }
  });

  it('does not echo what a failed fetch answered', async () => {
    const allowed = await startTestBuilder({ uids: TEST_UID_RANGES.network });
    const server = await httpServer((request, response) => {
      if (request.url === '/teapot') return response.writeHead(418).end('SECRET-ANSWER');
      response.end('SECRET-BODY');
    });
    try {
      for (const [file, status] of [['teapot', 422], ['body', 422]] as const) {
        const response = await fetch(`${allowed.url}/v1/builds`, {
          method: 'POST',
          headers: { authorization: `Bearer ${allowed.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ source: { url: `${server.url}/${file}`, sha256: 'a'.repeat(64) }, target: hostTargetSpec() }),
        });
        expect(response.status).toBe(status);
        const text = await response.text();
        expect(text).not.toContain('418');
        expect(text).not.toContain('SECRET');
        // The sha256 of what the URL served stays in the builder's log.
        expect(text).not.toContain(createHash('sha256').update('SECRET-BODY').digest('hex'));
      }
      expect(allowed.logs.join('')).toContain('source sha256 mismatch');
    } finally {
      await server.stop();
      await allowed.stop();
    }
  });
});
