/**
 * Which addresses the builder fetches sources from and PUTs outputs to (SSRF guard, issue 15.7).
 *
 * A request names the URLs, so without a guard a token holder could make the builder fetch the
 * cloud metadata service (169.254.169.254) or a service on its loopback or private network.
 * Every connection the guarded agents make is checked at connect time, after the name is
 * resolved, and connects to exactly the addresses that were checked (a DNS answer that changes
 * between a check and the connect — rebinding — cannot slip through). That covers redirects
 * too: each hop is a new connection through the same agent.
 *
 * - always refused: link-local (169.254.0.0/16, fe80::/10: the metadata services), unspecified
 *   (0.0.0.0/8, ::), multicast and reserved (224.0.0.0/3, ff00::/8, ::/96 IPv4-compatible);
 * - refused unless `builder.allowSources` lists them (a CIDR, or the URL's host name): loopback
 *   (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16, 100.64/10 shared address space —
 *   Alibaba Cloud's metadata is 100.100.100.200 —, fec0::/10), unique-local (fc00::/7);
 * - IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses count as their IPv4.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP, createConnection as netConnect, type LookupFunction } from 'node:net';
import type { Duplex } from 'node:stream';
import { BundleError } from '../errors.js';
import { redact } from '../redact.js';

export type AddressClass = 'link-local' | 'unspecified' | 'multicast' | 'reserved' | 'loopback' | 'private' | 'unique-local' | 'public';

/** Classes no allow-list entry opens. */
const ALWAYS_REFUSED: ReadonlySet<AddressClass> = new Set(['link-local', 'unspecified', 'multicast', 'reserved']);

const RANGES: ReadonlyArray<[AddressClass, string, number]> = [
  ['unspecified', '0.0.0.0', 8],
  ['unspecified', '::', 128],
  ['link-local', '169.254.0.0', 16],
  ['link-local', 'fe80::', 10],
  ['multicast', '224.0.0.0', 4],
  ['multicast', 'ff00::', 8],
  ['reserved', '240.0.0.0', 4],
  ['loopback', '127.0.0.0', 8],
  ['loopback', '::1', 128],
  ['private', '10.0.0.0', 8],
  ['private', '172.16.0.0', 12],
  ['private', '192.168.0.0', 16],
  ['private', '100.64.0.0', 10],
  ['private', 'fec0::', 10],
  ['private', '64:ff9b:1::', 48],
  ['unique-local', 'fc00::', 7],
];

const CLASS_LISTS = new Map<AddressClass, BlockList>();
for (const [kind, network, prefix] of RANGES) {
  let list = CLASS_LISTS.get(kind);
  if (!list) CLASS_LISTS.set(kind, (list = new BlockList()));
  list.addSubnet(network, prefix, network.includes(':') ? 'ipv6' : 'ipv4');
}

/** The 8 groups of an IPv6 address (with or without an embedded dotted quad). */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase();
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const middle = tail === undefined ? [] : new Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...middle, ...right].map((group) => Number.parseInt(group, 16));
}

/**
 * The address a connection really reaches: IPv4-mapped (::ffff:a.b.c.d) and NAT64
 * (64:ff9b::a.b.c.d) addresses as their IPv4, zone ids dropped.
 */
export function effectiveAddress(address: string): string {
  const bare = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  if (isIP(bare) !== 6) return bare;
  const groups = ipv6Groups(bare);
  const mapped = groups.slice(0, 6).every((group, index) => (index === 5 ? group === 0xffff : group === 0));
  const nat64 = groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((group) => group === 0);
  if (!mapped && !nat64) return bare;
  const [high = 0, low = 0] = groups.slice(6);
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}

/** What kind of address an IP literal is. */
export function classifyAddress(address: string): AddressClass {
  const effective = effectiveAddress(address);
  const type = isIP(effective) === 6 ? 'ipv6' : 'ipv4';
  for (const [kind, list] of CLASS_LISTS) if (list.check(effective, type)) return kind;
  // ::a.b.c.d (IPv4-compatible, deprecated): never a real destination.
  if (type === 'ipv6' && ipv6Groups(effective).slice(0, 6).every((group) => group === 0)) return 'reserved';
  return 'public';
}

const HOST_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

/** The parsed `builder.allowSources`: subnets and host names (exact, or `*.suffix`). */
export interface AllowList {
  subnets: BlockList;
  names: ReadonlySet<string>;
  suffixes: readonly string[];
  /** Entries that stay refused anyway (link-local and the other always-refused ranges). */
  warnings: string[];
}

function parseSubnet(entry: string): { network: string; prefix: number; type: 'ipv4' | 'ipv6' } | undefined {
  const [network = '', prefixText, extra] = entry.split('/');
  const bare = network.replace(/^\[|\]$/g, '');
  const version = isIP(bare);
  if (version === 0 || extra !== undefined) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
  if (!(prefix >= 0 && prefix <= max)) return undefined;
  return { network: bare, prefix, type: version === 4 ? 'ipv4' : 'ipv6' };
}

/** Problems with `builder.allowSources` entries, for the config check. */
export function allowSourcesProblem(value: unknown): string | undefined {
  const bad = (value as unknown[]).filter((entry) => typeof entry !== 'string' || (!parseSubnet(entry) && !HOST_NAME.test(entry.toLowerCase().replace(/\.$/, ''))));
  return bad.length > 0 ? `${bad.map((entry) => JSON.stringify(entry)).join(', ')}: not a CIDR (10.0.0.0/8, fd00::/8), an IP address or a host name (minio.internal, *.internal)` : undefined;
}

export function parseAllowList(entries: readonly string[]): AllowList {
  const subnets = new BlockList();
  const names = new Set<string>();
  const suffixes: string[] = [];
  const warnings: string[] = [];
  for (const entry of entries) {
    const subnet = parseSubnet(entry.trim());
    if (subnet) {
      subnets.addSubnet(subnet.network, subnet.prefix, subnet.type);
      const kind = classifyAddress(subnet.network);
      if (ALWAYS_REFUSED.has(kind) || subnet.prefix === 0) {
        warnings.push(`builder.allowSources: ${entry} covers ${subnet.prefix === 0 ? 'every address' : `${kind} addresses`}; link-local, unspecified, multicast and reserved addresses stay refused`);
      }
      continue;
    }
    const name = entry.trim().toLowerCase().replace(/\.$/, '');
    if (!HOST_NAME.test(name)) throw new BundleError('ERR_CONFIG', `builder.allowSources: ${JSON.stringify(entry)} is not a CIDR, an IP address or a host name.`);
    if (name.startsWith('*.')) suffixes.push(name.slice(1));
    else names.add(name);
  }
  return { subnets, names, suffixes, warnings };
}

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/** Resolves a host name to every address a connection could use (default: dns.lookup, as net does). */
export type Resolver = (host: string) => Promise<ResolvedAddress[]>;

/** Makes the connection once its addresses are checked (default: net / tls via the agent). */
export type Connector = (options: http.ClientRequestArgs & { lookup: LookupFunction }, secure: boolean) => Duplex;

export interface AddressGuardOptions {
  /** `builder.allowSources`: CIDRs, IP addresses and host names that may be loopback/private. */
  allow?: readonly string[];
  /** For tests: answers name lookups instead of DNS. */
  resolve?: Resolver;
  /** For tests: replaces the socket connect (called only with checked addresses). */
  connect?: Connector;
}

export interface AddressGuard {
  /**
   * Resolves the URL's host and checks every address: resolves with them, or rejects with
   * ERR_SOURCE_REFUSED (a refused address) or ERR_SOURCE_FETCH (a name that does not resolve).
   * `what` names the URL in the message ("source", "output").
   */
  check(url: string, what?: string): Promise<ResolvedAddress[]>;
  /** Agents for got (`agent: guard.agents`): every connection they make is checked first. */
  agents: { http: http.Agent; https: https.Agent };
  warnings: readonly string[];
}

const defaultResolve: Resolver = async (host) => (await dnsLookup(host, { all: true, verbatim: true })).map(({ address, family }) => ({ address, family: family === 6 ? 6 : 4 }));

/** A lookup that answers the addresses already checked, and nothing else. */
function pinnedLookup(addresses: readonly ResolvedAddress[]): LookupFunction {
  return ((_host: string, options: { family?: number | string; all?: boolean }, callback: (error: NodeJS.ErrnoException | null, address: string | ResolvedAddress[], family?: number) => void) => {
    const wanted = options.family === 4 || options.family === 'IPv4' ? 4 : options.family === 6 || options.family === 'IPv6' ? 6 : 0;
    const usable = addresses.filter((entry) => wanted === 0 || entry.family === wanted);
    const first = usable[0];
    if (!first) return callback(Object.assign(new Error(`no IPv${wanted} address`), { code: 'ENOTFOUND' }), '');
    if (options.all) return callback(null, usable.map((entry) => ({ ...entry })));
    return callback(null, first.address, first.family);
  }) as unknown as LookupFunction;
}

export const REFUSED_HINT = 'The builder fetches from public addresses only; list a loopback or private range (CIDR) or the host name in builder.allowSources (BUNDLE_DISPATCH_BUILDER_ALLOW_SOURCES) to allow one. Link-local addresses are never fetched.';

/** "a loopback address, which builder.allowSources does not allow" */
export function refusalReason(kind: AddressClass): string {
  return `a ${kind} address, which ${ALWAYS_REFUSED.has(kind) ? 'the builder never connects to' : 'builder.allowSources does not allow'}`;
}

/** The address class of an ERR_SOURCE_REFUSED somewhere in an error's cause chain. */
export function refusedClass(error: unknown): AddressClass | undefined {
  for (let inner = error, depth = 0; inner instanceof Error && depth < 5; inner = inner.cause, depth += 1) {
    if (inner instanceof BundleError && inner.code === 'ERR_SOURCE_REFUSED') return (inner.details?.class as AddressClass | undefined) ?? 'reserved';
  }
  return undefined;
}

export function createAddressGuard(options: AddressGuardOptions = {}): AddressGuard {
  const allow = parseAllowList(options.allow ?? []);
  const resolve = options.resolve ?? defaultResolve;
  const allowedByName = (name: string) => allow.names.has(name) || allow.suffixes.some((suffix) => name.endsWith(suffix));

  const refuse = (subject: string, kind: AddressClass, shown: string) => new BundleError('ERR_SOURCE_REFUSED', `${subject} points at ${refusalReason(kind)}.`, { hint: REFUSED_HINT, details: { url: shown, class: kind } });

  /** The checked addresses of `host` (a URL's hostname, IPv6 with or without brackets). */
  const checkHost = async (host: string, shown: string, subject: string): Promise<ResolvedAddress[]> => {
    const bare = host.replace(/^\[|\]$/g, '');
    if (isIP(bare)) {
      const kind = classifyAddress(bare);
      const effective = effectiveAddress(bare);
      if (ALWAYS_REFUSED.has(kind) || (kind !== 'public' && !allow.subnets.check(effective, isIP(effective) === 6 ? 'ipv6' : 'ipv4'))) throw refuse(subject, kind, shown);
      return [{ address: bare, family: isIP(bare) === 6 ? 6 : 4 }];
    }
    const name = bare.toLowerCase().replace(/\.$/, '');
    let addresses: ResolvedAddress[];
    try {
      addresses = await resolve(name);
    } catch (error) {
      throw new BundleError('ERR_SOURCE_FETCH', `${subject}: its host name does not resolve.`, { cause: error, details: { url: shown } });
    }
    if (addresses.length === 0) throw new BundleError('ERR_SOURCE_FETCH', `${subject}: its host name does not resolve.`, { details: { url: shown } });
    const byName = allowedByName(name);
    // Every address is checked: a connection may try any of them (happy eyeballs).
    for (const { address } of addresses) {
      const kind = classifyAddress(address);
      const effective = effectiveAddress(address);
      if (ALWAYS_REFUSED.has(kind) || (kind !== 'public' && !byName && !allow.subnets.check(effective, isIP(effective) === 6 ? 'ipv6' : 'ipv4'))) throw refuse(subject, kind, shown);
    }
    return addresses;
  };

  const check = async (url: string, what = 'source'): Promise<ResolvedAddress[]> => {
    const parsed = new URL(url);
    const shown = redact(`${parsed.origin}${parsed.pathname}`);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new BundleError('ERR_SOURCE_REFUSED', `The ${what} URL ${shown} is not http(s).`, { details: { url: shown } });
    return checkHost(parsed.hostname, shown, `The ${what} URL ${shown}`);
  };

  /** createConnection for an agent: check, then connect to exactly the checked addresses. */
  const guarded = (secure: boolean, viaAgent: (options: http.ClientRequestArgs) => Duplex) => (connectOptions: http.ClientRequestArgs, callback?: (error: Error | null, stream: Duplex) => void) => {
    const host = connectOptions.host ?? connectOptions.hostname ?? 'localhost';
    const shown = `${secure ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}${connectOptions.port ? `:${connectOptions.port}` : ''}/`;
    checkHost(host, shown, `A connection to ${shown}`).then((addresses) => {
      const pinned = { ...connectOptions, lookup: pinnedLookup(addresses) };
      callback?.(null, options.connect ? options.connect(pinned, secure) : viaAgent(pinned));
    }, (error: Error) => callback?.(error, undefined as unknown as Duplex));
    return undefined;
  };

  class GuardedHttpAgent extends http.Agent {
    override createConnection = guarded(false, (pinned) => netConnect(pinned as Parameters<typeof netConnect>[0]));
  }
  class GuardedHttpsAgent extends https.Agent {
    override createConnection = guarded(true, (pinned) => https.Agent.prototype.createConnection.call(this, pinned) as Duplex);
  }
  return { check, agents: { http: new GuardedHttpAgent({ keepAlive: false }), https: new GuardedHttpsAgent({ keepAlive: false }) }, warnings: allow.warnings };
}
