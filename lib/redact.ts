/**
 * Removes secrets from text before it reaches a log line, an error message or a record:
 * the secrets a build knows (registry tokens), credentials in URLs, the signature of
 * presigned URLs and npm's `_authToken=` lines.
 */
export function redact(text: string, secrets: Iterable<string> = []): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.split(secret).join('***');
  }
  return out
    .replace(/(\/\/[^/\s:@]+:)[^@\s/]+@/g, '$1***@')
    .replace(/(_authToken|_auth|_password)(\s*=\s*)\S+/gi, '$1$2***')
    .replace(/([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|token)=)[^&\s"']+/gi, '$1***')
    .replace(/(authorization:\s*(?:bearer|basic)\s+)\S+/gi, '$1***');
}

/** Names of environment variables whose values are secrets (credentials, tokens, passwords). */
const SECRET_ENV_NAME = /^(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|BUNDLE_DISPATCH_BUILDER_TOKENS)$|(TOKENS?|SECRET|SECRET_KEY|PASSWORD|PASSWD|API_KEY|_AUTH|AUTHTOKEN|CREDENTIALS?)$/i;
/** Shorter values are not redacted: they would scrub ordinary words out of every line. */
const MIN_SECRET_LENGTH = 8;

/**
 * The secrets a process knows from its environment: AWS credentials, builder tokens (each of
 * a comma-separated list), registry tokens (`NPM_TOKEN`, `npm_config_//…:_authToken`) and any
 * variable named like a token, secret or password. Every log line, error and record is
 * scrubbed of them (the second line behind the sandbox, which keeps scripts from reading them).
 *
 * @example
 * knownSecrets({ AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI…', HOME: '/root' }) // ['wJalrXUtnFEMI…']
 */
export function knownSecrets(env: NodeJS.ProcessEnv, extra: Iterable<string | undefined> = []): string[] {
  const found = new Set<string>();
  const add = (value: string | undefined) => {
    const trimmed = value?.trim();
    if (trimmed && trimmed.length >= MIN_SECRET_LENGTH) found.add(trimmed);
  };
  for (const [name, value] of Object.entries(env)) {
    if (!value || !SECRET_ENV_NAME.test(name)) continue;
    add(value);
    if (value.includes(',')) value.split(',').forEach(add);
  }
  for (const value of extra) add(value);
  // Longest first: a secret that contains another is scrubbed whole.
  return [...found].sort((a, b) => b.length - a.length);
}
