import { readFileSync } from 'node:fs';
import { BundleError } from './errors.js';

/** Operating systems and CPUs in Node's own spelling (`process.platform`, `process.arch`). */
export type TargetOs = 'linux' | 'darwin' | 'win32' | 'freebsd' | 'openbsd' | 'sunos' | 'aix';
export type TargetCpu = 'x64' | 'arm64' | 'arm' | 'ia32' | 'ppc64' | 's390x' | 'riscv64' | 'loong64';
export type TargetLibc = 'glibc' | 'musl';

/** One platform a bundle is built for: `linux-x64`, `linux-arm64-musl`, `darwin-arm64@22`. */
export interface Target {
  os: TargetOs;
  cpu: TargetCpu;
  /** Linux only; absent means glibc when the target is normalized. */
  libc?: TargetLibc;
  /** A semver range for Node (`22`, `>=20 <23`); absent means "from the package's engines". */
  node?: string;
}

const OSES: readonly TargetOs[] = ['linux', 'darwin', 'win32', 'freebsd', 'openbsd', 'sunos', 'aix'];
const CPUS: readonly TargetCpu[] = ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64'];
const LIBCS: readonly TargetLibc[] = ['glibc', 'musl'];

/** Parses `<os>-<cpu>[-<libc>][@<node range>]`. Linux targets get libc glibc unless told. */
export function parseTarget(text: string): Target {
  const at = text.indexOf('@');
  const platform = at === -1 ? text : text.slice(0, at);
  const node = at === -1 ? undefined : text.slice(at + 1).trim();
  const [os, cpu, libc, ...rest] = platform.trim().split('-');
  const usage = `Write a target as <os>-<cpu>[-<libc>][@<node range>], e.g. linux-x64, linux-arm64-musl, darwin-arm64@22.`;
  if (!os || !cpu || rest.length > 0) {
    throw new BundleError('ERR_USAGE', `"${text}" is not a target.`, { hint: usage });
  }
  if (!OSES.includes(os as TargetOs)) {
    throw new BundleError('ERR_USAGE', `Unknown os "${os}" in target "${text}" (one of ${OSES.join(', ')}).`, { hint: usage });
  }
  if (!CPUS.includes(cpu as TargetCpu)) {
    throw new BundleError('ERR_USAGE', `Unknown cpu "${cpu}" in target "${text}" (one of ${CPUS.join(', ')}).`, { hint: usage });
  }
  if (libc !== undefined && !LIBCS.includes(libc as TargetLibc)) {
    throw new BundleError('ERR_USAGE', `Unknown libc "${libc}" in target "${text}" (glibc or musl).`, { hint: usage });
  }
  if (libc !== undefined && os !== 'linux') {
    throw new BundleError('ERR_USAGE', `Target "${text}": libc applies to linux only.`, { hint: usage });
  }
  if (node !== undefined && node === '') {
    throw new BundleError('ERR_USAGE', `Target "${text}" has an empty Node range after "@".`, { hint: usage });
  }
  return normalizeTarget({ os: os as TargetOs, cpu: cpu as TargetCpu, ...(libc ? { libc: libc as TargetLibc } : {}), ...(node ? { node } : {}) });
}

/** Linux gets an explicit libc (glibc by default); other systems none. */
export function normalizeTarget(target: Target): Target {
  const { os, cpu, node } = target;
  const libc = os === 'linux' ? (target.libc ?? 'glibc') : undefined;
  return { os, cpu, ...(libc ? { libc } : {}), ...(node ? { node } : {}) };
}

/** `linux-x64` (glibc is the default and left out), `linux-arm64-musl`, `darwin-arm64@22`. */
export function formatTarget(target: Target, options: { withNode?: boolean } = {}): string {
  const libc = target.os === 'linux' && target.libc === 'musl' ? '-musl' : '';
  const node = options.withNode !== false && target.node ? `@${target.node}` : '';
  return `${target.os}-${target.cpu}${libc}${node}`;
}

let host: Target | undefined;

/**
 * The platform this process runs on. libc as detect-libc finds it: the system's `ldd` names its
 * C library; Node's own report (~10 ms to make) only where ldd says nothing. Asked once.
 */
export function hostTarget(): Target {
  if (host) return { ...host };
  const os = process.platform as TargetOs;
  const cpu = process.arch as TargetCpu;
  if (os !== 'linux') return { ...(host = { os, cpu }) };
  let ldd = '';
  try {
    ldd = readFileSync('/usr/bin/ldd', 'latin1');
  } catch {
    // no ldd: the report decides
  }
  const fromLdd = ldd.includes('musl') ? 'musl' : /GLIBC|GNU C Library/.test(ldd) ? 'glibc' : undefined;
  const libc = fromLdd ?? ((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime ? 'glibc' : 'musl');
  return { ...(host = { os, cpu, libc }) };
}

export function sameTarget(a: Target, b: Target): boolean {
  const x = normalizeTarget(a);
  const y = normalizeTarget(b);
  return x.os === y.os && x.cpu === y.cpu && x.libc === y.libc;
}
