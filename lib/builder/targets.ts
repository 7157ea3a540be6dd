/**
 * The targets a builder serves. By default: its own platform (native builds, addons compiled
 * here), every foreign Linux CPU it has a cross toolchain for (addons cross-compiled and
 * loaded under an emulator), plus the common cross targets, which build only when nothing
 * needs compiling (the workflow refuses the rest with ERR_NATIVE_NEEDS_TARGET).
 */
import { formatTarget, normalizeTarget, parseTarget, sameTarget, type Target } from '../target.js';
import { buildMethod, type BuildMethod, type Toolchain } from '../workflow/toolchains.js';

export const CROSS_TARGETS: readonly string[] = ['linux-x64', 'linux-arm64', 'linux-x64-musl', 'linux-arm64-musl', 'darwin-x64', 'darwin-arm64', 'win32-x64'];

export function servedTargets(configured: readonly string[], host: Target, toolchains: readonly Toolchain[] = []): Target[] {
  const wanted = configured.length > 0
    ? configured.map((text) => parseTarget(text))
    : [normalizeTarget(host), ...toolchains.map((toolchain) => toolchain.target), ...CROSS_TARGETS.map((text) => parseTarget(text))];
  const served: Target[] = [];
  for (const target of wanted) {
    // The node range is the request's business: a builder serves platforms.
    const { node: _node, ...platform } = normalizeTarget(target);
    if (!served.some((known) => sameTarget(known, platform))) served.push(platform);
  }
  return served;
}

/** How each served target is built, by its name: what health and the OpenAPI document say. */
export function targetMethods(targets: readonly Target[], host: Target, toolchains: readonly Toolchain[]): Record<string, BuildMethod> {
  return Object.fromEntries(targets.map((target) => [formatTarget(target), buildMethod(target, host, toolchains)]));
}

/** `linux-x64 (native), linux-arm64 (cross-compiled), darwin-arm64 (cross)`. */
export function describeTargets(targets: readonly Target[], methods?: Record<string, BuildMethod>): string {
  return targets.map((target) => {
    const name = formatTarget(target);
    return methods?.[name] ? `${name} (${methods[name]})` : name;
  }).join(', ');
}
