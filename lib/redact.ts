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
