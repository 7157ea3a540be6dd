/**
 * The name and version of the package being bundled, checked the way npm checks them. Both end
 * up in file names (`{pkgfile}-{version}-…tgz`) and destination keys (`{name}/{version}/…`), so
 * a name like `../../x` is a path traversal, not a typo.
 */
// One function, not semver's index (48 modules): the main command's start-up loads this.
import parseSemver from 'semver/functions/parse.js';
import validateNpmPackageName from 'validate-npm-package-name';
import { BundleError } from './errors.js';

/** npm's limit on a name's length; older names may break other rules, never this one. */
export const MAX_PACKAGE_NAME_LENGTH = 214;

/**
 * Why `name` is not an npm package name, or undefined when it is one. npm's rules for
 * *existing* packages apply (validate-npm-package-name's `validForOldPackages`, which is what
 * npm itself accepts in a spec): capitals, core-module names and `~'!()*` are only warnings
 * there, and real registry packages (`JSONStream`, `events`) carry them. Everything that could
 * leave a directory — a slash outside `@scope/name`, a leading dot, spaces, any character that
 * is not URL-safe — is an error.
 */
export function packageNameProblem(name: string): string | undefined {
  const verdict = validateNpmPackageName(name);
  if (!verdict.validForOldPackages) return (verdict.errors ?? ['it is not a valid npm package name']).join('; ');
  if (name.length > MAX_PACKAGE_NAME_LENGTH) return `name can no longer contain more than ${MAX_PACKAGE_NAME_LENGTH} characters`;
  return undefined;
}

/**
 * Why `version` is not a version npm would publish as written, or undefined. Only the
 * canonical form counts (`1.2.3`, `1.2.3-rc.1+build.5`): npm would rewrite `v1.2.3` or
 * `=1.2.3`, and the registry's version is what keys and file names must match.
 */
export function packageVersionProblem(version: string): string | undefined {
  const parsed = parseSemver(version);
  if (!parsed) return 'it is not a semver version (like 1.2.3)';
  const canonical = parsed.build.length > 0 ? `${parsed.version}+${parsed.build.join('.')}` : parsed.version;
  if (canonical !== version) return `it is not written in semver's canonical form (npm would publish it as "${canonical}")`;
  return undefined;
}

/**
 * Throws `ERR_PACKAGE_INVALID` unless `name` is an npm package name (scoped names included)
 * and `version` a canonical semver version. Called on the package.json of every input before
 * anything runs.
 *
 * @example
 * checkPackageIdentity({ name: '@acme/app', version: '1.0.0' }); // passes
 * checkPackageIdentity({ name: '../../x', version: '1.0.0' });   // ERR_PACKAGE_INVALID
 */
export function checkPackageIdentity(manifest: { name: string; version: string }): void {
  const nameProblem = packageNameProblem(manifest.name);
  if (nameProblem !== undefined) {
    throw new BundleError('ERR_PACKAGE_INVALID',
      `package.json's "name" ${JSON.stringify(manifest.name)} is not a valid npm package name: ${nameProblem}.`,
      { hint: 'Use a name npm accepts (lowercase letters, digits, - . _ ~, optionally @scope/name) and pack again.', details: { field: 'name', value: manifest.name } });
  }
  const versionProblem = packageVersionProblem(manifest.version);
  if (versionProblem !== undefined) {
    throw new BundleError('ERR_PACKAGE_INVALID',
      `package.json's "version" ${JSON.stringify(manifest.version)} is not a valid version: ${versionProblem}.`,
      { hint: 'Set "version" to a semver version such as 1.0.0 and pack again.', details: { field: 'version', value: manifest.version } });
  }
}
