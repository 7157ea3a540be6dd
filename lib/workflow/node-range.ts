/**
 * Which Node range a build must satisfy: a module of its own, light enough for the dispatching
 * side (which reads it for this machine's target before any build) without the runtime step.
 */
// One function, not semver's 48-module index: a cached re-run loads this module.
import semverValidRange from 'semver/ranges/valid.js';
import { BundleError } from '../errors.js';

export type RangeSource = 'target' | 'devEngines' | 'engines' | 'any';

/**
 * The Node range a build must satisfy, by precedence: the target's `@range` (or `--node`),
 * then `devEngines.runtime` (an object or an array; the entry named `node`), then
 * `engines.node`, else any version (`*`). An invalid range is an error, not "any".
 *
 * @example
 * chooseNodeRange({ engines: { node: '>=22' } })            // { range: '>=22', from: 'engines' }
 * chooseNodeRange({ engines: { node: '>=22' } }, '24')      // { range: '24', from: 'target' }
 */
export function chooseNodeRange(packageJson: Record<string, unknown>, targetRange?: string): { range: string; from: RangeSource } {
  if (targetRange !== undefined && targetRange.trim() !== '') {
    return { range: validRange(targetRange, 'target', 'ERR_USAGE', `the target's Node range`), from: 'target' };
  }
  const devEngines = packageJson.devEngines;
  if (devEngines && typeof devEngines === 'object') {
    const runtime = (devEngines as Record<string, unknown>).runtime;
    const entries = Array.isArray(runtime) ? runtime : runtime ? [runtime] : [];
    for (const entry of entries) {
      if (!entry || typeof entry !== 'object') continue;
      const { name, version } = entry as { name?: unknown; version?: unknown };
      if (name === 'node' && typeof version === 'string' && version.trim() !== '') {
        return { range: validRange(version, 'devEngines', 'ERR_BAD_PACKAGE_JSON', 'devEngines.runtime (node).version in package.json'), from: 'devEngines' };
      }
    }
  }
  const engines = packageJson.engines;
  if (engines && typeof engines === 'object') {
    const node = (engines as Record<string, unknown>).node;
    if (typeof node === 'string' && node.trim() !== '') {
      return { range: validRange(node, 'engines', 'ERR_BAD_PACKAGE_JSON', 'engines.node in package.json'), from: 'engines' };
    }
  }
  return { range: '*', from: 'any' };
}

function validRange(range: string, _from: RangeSource, code: 'ERR_USAGE' | 'ERR_BAD_PACKAGE_JSON', where: string): string {
  const trimmed = range.trim();
  if (semverValidRange(trimmed) === null) {
    throw new BundleError(code, `${where} is "${trimmed}", which is not a semver range.`, { hint: 'Write a range such as ">=22 <23", "^22" or "22".' });
  }
  return trimmed;
}
