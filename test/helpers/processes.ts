import { execFileSync } from 'node:child_process';

/**
 * The live (not zombie) processes whose command line holds `marker`, as `ps` lines
 * (`<stat> <args>`): what a test checks is left, or still running, after a kill.
 */
export function liveProcessesWith(marker: string): string[] {
  return execFileSync('ps', ['-A', '-o', 'stat=,args='], { encoding: 'utf8' }).split('\n')
    .filter((line) => line.includes(marker) && !line.trim().startsWith('Z'));
}
