/**
 * What a watch entry follows, and what it finds there. A registry entry is a package name with
 * a dist-tag (`my-app@latest`, `my-app@next`; a bare name means `latest`) or a semver range
 * (`my-app@^2`): the tag's current version, or every published version in the range.
 */
import semver from 'semver';
import { BundleError } from '../errors.js';
import { runTool, type ToolEnvironment } from '../dispatch/input.js';

export type WatchSource =
  | { kind: 'registry'; name: string; tag: string }
  | { kind: 'registry'; name: string; range: string };

/** `name`, `name@tag`, `@scope/name@range`. Git URLs are refused (not watched yet). */
export function parseWatchInput(input: string): WatchSource {
  if (/^(git\+|git:|ssh:|https?:).*|\.git(#|$)/.test(input)) {
    throw new BundleError('ERR_USAGE', `watch: "${input}" is a git input; watch follows registry packages (name@tag or name@range) so far.`, { hint: 'Give a package name with a dist-tag or a semver range, e.g. my-app@latest or my-app@^2.' });
  }
  const at = input.lastIndexOf('@');
  const name = at > 0 ? input.slice(0, at) : input;
  const selector = at > 0 ? input.slice(at + 1) : 'latest';
  if (!/^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*$/i.test(name) || selector === '') {
    throw new BundleError('ERR_USAGE', `watch: "${input}" is not a registry package with a tag or range (my-app@latest, @acme/app@^2).`);
  }
  if (semver.validRange(selector) && !/^[a-z][\w-]*$/i.test(selector)) return { kind: 'registry', name, range: selector };
  return { kind: 'registry', name, tag: selector };
}

/** The versions the entry selects, oldest first. */
export async function candidates(source: WatchSource, tools: ToolEnvironment, options: { cwd: string; signal?: AbortSignal }): Promise<string[]> {
  const output = await runTool(tools, tools.node, [tools.npmCli, 'view', source.name, 'versions', 'dist-tags', '--json', '--loglevel=error'], { cwd: options.cwd, what: `npm view ${source.name}`, ...(options.signal ? { signal: options.signal } : {}) });
  let parsed: { versions?: string | string[]; 'dist-tags'?: Record<string, string> };
  try {
    parsed = JSON.parse(output) as typeof parsed;
  } catch (error) {
    throw new BundleError('ERR_NPM_FAILED', `npm view ${source.name} did not answer JSON: ${output.slice(0, 200)}`, { cause: error });
  }
  const versions = [parsed.versions ?? []].flat().filter((version) => semver.valid(version));
  if ('tag' in source) {
    const version = parsed['dist-tags']?.[source.tag];
    if (!version) throw new BundleError('ERR_NPM_PACKAGE_NOT_FOUND', `${source.name} has no dist-tag "${source.tag}" (it has ${Object.keys(parsed['dist-tags'] ?? {}).join(', ') || 'none'}).`);
    return [version];
  }
  return versions.filter((version) => semver.satisfies(version, source.range)).sort(semver.compare);
}
