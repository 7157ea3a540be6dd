// Loaded with `node --import` by the bundle bench: records this process's own peak RSS (KiB,
// RUSAGE_SELF: npm and scripts are separate processes and do not count) when it exits.
import { writeFileSync } from 'node:fs';

process.on('exit', () => {
  if (process.env.BENCH_RSS_FILE) writeFileSync(process.env.BENCH_RSS_FILE, String(process.resourceUsage().maxRSS));
});
