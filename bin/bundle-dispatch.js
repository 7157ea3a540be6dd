#!/usr/bin/env node
import { main } from '../build/lib/cli/main.js';

// The AWS SDK is pinned to releases that support Node 20 (see README); its notice that later
// releases will not is not for our users.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

process.exitCode = await main(process.argv.slice(2), {
  env: process.env,
  cwd: process.cwd(),
  stdout: process.stdout,
  stderr: process.stderr,
  signals: process,
});
