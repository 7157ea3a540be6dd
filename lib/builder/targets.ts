/**
 * The targets a builder serves. By default: its own platform (native builds, addons compiled
 * here) plus the common cross targets, which build only when nothing needs compiling (the
 * workflow refuses the rest with ERR_NATIVE_NEEDS_TARGET).
 */
import { formatTarget, normalizeTarget, parseTarget, sameTarget, type Target } from '../target.js';

export const CROSS_TARGETS: readonly string[] = ['linux-x64', 'linux-arm64', 'linux-x64-musl', 'linux-arm64-musl', 'darwin-x64', 'darwin-arm64', 'win32-x64'];

export function servedTargets(configured: readonly string[], host: Target): Target[] {
  const wanted = configured.length > 0 ? configured.map((text) => parseTarget(text)) : [normalizeTarget(host), ...CROSS_TARGETS.map((text) => parseTarget(text))];
  const served: Target[] = [];
  for (const target of wanted) {
    // The node range is the request's business: a builder serves platforms.
    const { node: _node, ...platform } = normalizeTarget(target);
    if (!served.some((known) => sameTarget(known, platform))) served.push(platform);
  }
  return served;
}

export function describeTargets(targets: readonly Target[]): string {
  return targets.map((target) => formatTarget(target)).join(', ');
}
