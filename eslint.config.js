import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['build/', 'node_modules/', 'examples/', 'coverage/', '.cache/', 'test/fixtures/', 'bench/.work/', '**/*.d.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-properties': ['error', { object: 'process', property: 'exit', message: 'Only lib/cli may exit; set process.exitCode in bin.' }],
    },
  },
  {
    files: ['lib/cli/**', 'bench/**', 'test/**'],
    rules: { 'no-restricted-properties': 'off' },
  },
);
