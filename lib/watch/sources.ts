/**
 * What a watch entry follows, and what it finds there. A registry entry is a package name with
 * a dist-tag (`my-app@latest`, `my-app@next`; a bare name means `latest`) or a semver range
 * (`my-app@^2`): the tag's current version, or every published version in the range. A git
 * entry is a repository URL with a ref pattern (`git://host/app.git#v*`: tags matching it;
 * `…#main`: that branch or tag): each matching ref at its commit, so a moved tag is a new
 * candidate, built under its new commit.
 */
import semver from 'semver';
import { BundleError } from '../errors.js';
import { isGitUrl, runTool, type ToolEnvironment } from '../dispatch/input.js';
import { redact } from '../redact.js';

export type WatchSource =
  | { kind: 'registry'; name: string; tag: string }
  | { kind: 'registry'; name: string; range: string }
  | { kind: 'git'; url: string; pattern: string };

/** `name`, `name@tag`, `@scope/name@range`, or a git URL with `#pattern`. */
export function parseWatchInput(input: string): WatchSource {
  if (isGitUrl(input)) {
    const hash = input.indexOf('#');
    if (hash === -1 || hash === input.length - 1) {
      throw new BundleError('ERR_USAGE', `watch: "${input}" names no ref to follow.`, { hint: 'Add #<pattern>: #v* (tags starting with v), #main (a branch).' });
    }
    return { kind: 'git', url: input.slice(0, hash).replace(/^git\+(?=[a-z]+:)/i, ''), pattern: input.slice(hash + 1) };
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

/** What a git candidate is called: `<ref>@<commit>` (a moved ref is another candidate). */
export function gitCandidate(ref: string, commit: string): string {
  return `${ref}@${commit}`;
}

/** The spec the main command takes for a candidate of the entry. */
export function dispatchSpec(source: WatchSource, candidate: string): string {
  if (source.kind === 'git') return `${source.url}#${candidate.slice(candidate.lastIndexOf('@') + 1)}`;
  return `${source.name}@${candidate}`;
}

/** A glob of ref names (`v*`, `release-*`) as a whole-name pattern. */
function refPattern(pattern: string): RegExp {
  return new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}$`);
}

/** Matching tags (or the branch or tag named), each at its commit, oldest version first. */
async function gitCandidates(source: Extract<WatchSource, { kind: 'git' }>, tools: ToolEnvironment, options: { cwd: string; signal?: AbortSignal }): Promise<string[]> {
  const output = await runTool(tools, 'git', ['ls-remote', '--tags', '--heads', source.url], { cwd: options.cwd, what: `git ls-remote ${redact(source.url)}`, ...(options.signal ? { signal: options.signal } : {}) });
  const match = refPattern(source.pattern);
  const refs = new Map<string, string>();
  for (const line of output.split('\n')) {
    const [commit, ref] = line.trim().split(/\s+/);
    if (!commit || !ref) continue;
    // An annotated tag's peeled line (^{}) names the commit the tag points at.
    const name = ref.replace(/^refs\/(tags|heads)\//, '').replace(/\^\{\}$/, '');
    if (!match.test(name)) continue;
    if (ref.endsWith('^{}') || !refs.has(name)) refs.set(name, commit);
  }
  const order = (a: string, b: string) => {
    const [va, vb] = [semver.coerce(a), semver.coerce(b)];
    return va && vb && semver.compare(va, vb) !== 0 ? semver.compare(va, vb) : a.localeCompare(b);
  };
  return [...refs.keys()].sort(order).map((name) => gitCandidate(name, refs.get(name) as string));
}

/** The versions (or `<ref>@<commit>` of a git entry) the entry selects, oldest first. */
export async function candidates(source: WatchSource, tools: ToolEnvironment, options: { cwd: string; signal?: AbortSignal }): Promise<string[]> {
  if (source.kind === 'git') return gitCandidates(source, tools, options);
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
