#!/usr/bin/env node
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

// The AWS SDK is pinned to releases that support Node 20 (see README); its notice that later
// releases will not is not for our users.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// Node >= 22.8 keeps the code it compiles for our modules and the AWS SDK's on disk: on Node 22
// ~20 ms less for `bundle`, ~17 ms less to load the SDK (docs/bench.md). In the user's own
// cache dir, not Node's default in the shared os.tmpdir(): a tool that runs as root on builders
// does not load compiled code from a directory another user could have filled. Without an
// absolute cache home (XDG_CACHE_HOME, else HOME's .cache) there is no cache, never one in the cwd.
// NODE_COMPILE_CACHE=<dir> puts it elsewhere (Node then enables it itself); NODE_DISABLE_COMPILE_CACHE=1 turns it off.
if (module.enableCompileCache && !process.env.NODE_COMPILE_CACHE) {
  const cacheHome = [process.env.XDG_CACHE_HOME, homeCache()].find((dir) => dir && path.isAbsolute(dir));
  if (cacheHome) module.enableCompileCache(path.join(cacheHome, 'bundle-dispatch', 'compile-cache'));
}

function homeCache() {
  try {
    const home = os.homedir();
    return home ? path.join(home, '.cache') : undefined;
  } catch {
    return undefined; // no HOME and no passwd entry for this uid
  }
}

const { main } = await import('../build/lib/cli/main.js');
process.exitCode = await main(process.argv.slice(2), {
  env: process.env,
  cwd: process.cwd(),
  stdout: process.stdout,
  stderr: process.stderr,
  signals: process,
});
