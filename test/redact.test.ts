import { describe, expect, it } from 'vitest';
import { knownSecrets, redact } from '../lib/redact.js';

describe('knownSecrets', () => {
  it('finds credentials, tokens (each of a list) and passwords in an environment, longest first, and nothing else', () => {
    const secrets = knownSecrets({
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLEKEY01',
      AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      BUNDLE_DISPATCH_BUILDER_TOKENS: 'first-token-0123456789,second-token-0123456789',
      NPM_TOKEN: 'npm_abcdefghijklmnop',
      'npm_config_//registry.example/:_authToken': 'registry-token-xyz',
      POOL_X64: 'not-named-like-a-secret',
      DB_PASSWORD: 'short',
      HOME: '/root',
      PATH: '/usr/bin:/bin',
    }, ['pool-token-from-config', undefined]);
    expect(secrets).toEqual(expect.arrayContaining([
      'AKIAEXAMPLEKEY01', 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', 'first-token-0123456789', 'second-token-0123456789',
      'npm_abcdefghijklmnop', 'registry-token-xyz', 'pool-token-from-config',
    ]));
    expect(secrets).not.toContain('not-named-like-a-secret');
    expect(secrets).not.toContain('short');
    expect(secrets).not.toContain('/root');
    expect(secrets[0]).toBe('first-token-0123456789,second-token-0123456789');
    const line = 'AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY BUNDLE_DISPATCH_BUILDER_TOKENS=first-token-0123456789,second-token-0123456789';
    expect(redact(line, secrets)).toBe('AWS_SECRET_ACCESS_KEY=*** BUNDLE_DISPATCH_BUILDER_TOKENS=***');
  });
});
