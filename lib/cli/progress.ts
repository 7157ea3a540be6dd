import type { Writable } from 'node:stream';
import type { BuildEvent, StepName } from '../workflow/types.js';

export const STEP_TITLES: Record<StepName, string> = {
  unpack: 'Unpack the input',
  configure: 'Configure',
  runtime: 'Choose the Node runtime',
  install: 'Install production dependencies',
  bundle: 'Bundle dependencies and lock the platform',
  verify: 'Verify native files',
  pack: 'Pack the bundle',
};
const STEPS = Object.keys(STEP_TITLES) as StepName[];

export interface ProgressView {
  /** Feed every build event here. */
  onEvent(event: BuildEvent): void;
  /** Call once with the build's outcome; resolves when the view has finished drawing. */
  done(error?: unknown): Promise<void>;
}

/** Plain lines for logs and CI: one per step, npm's output only with --verbose. */
export function createLineView(out: Writable, options: { verbose: boolean; prefix?: string }): ProgressView {
  const prefix = options.prefix ? `[${options.prefix}] ` : '';
  return {
    onEvent(event) {
      if (event.type === 'step' && event.state !== 'started') {
        out.write(`${prefix}${event.state === 'finished' ? '✔' : '✖'} ${STEP_TITLES[event.step]} (${formatMs(event.durationMs)})\n`);
      } else if (event.type === 'log' && (options.verbose || event.stream === 'status')) {
        out.write(`${prefix}  ${event.step}: ${event.message}\n`);
      }
    },
    async done() {},
  };
}

/** listr2 on a terminal: a task per step, the last log line under the running one. */
export async function createListrView(title: string, options: { verbose: boolean }): Promise<ProgressView> {
  // Loaded only for a terminal: logs, CI and --json never pay for it.
  const { Listr } = await import('listr2');
  const waiters = new Map<StepName, { promise: Promise<void>; resolve: () => void; reject: (error: Error) => void }>();
  const lastLine = new Map<StepName, string>();
  const durations = new Map<StepName, number>();
  const outputs = new Map<StepName, (line: string) => void>();
  for (const step of STEPS) {
    let resolve!: () => void;
    let reject!: (error: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined);
    waiters.set(step, { promise, resolve, reject });
  }
  const list = new Listr([{
    title,
    task: (_ctx, parent) => parent.newListr(STEPS.map((step) => ({
      title: STEP_TITLES[step],
      task: async (_c, task) => {
        outputs.set(step, (line) => {
          task.output = line;
        });
        const last = lastLine.get(step);
        if (last) task.output = last;
        await waiters.get(step)?.promise;
        const took = durations.get(step);
        task.title = took === undefined ? STEP_TITLES[step] : `${STEP_TITLES[step]} (${formatMs(took)})`;
      },
      rendererOptions: { outputBar: options.verbose ? 5 : 1, persistentOutput: false },
    })), { concurrent: false, exitOnError: true }),
  }], { registerSignalListeners: false, exitOnError: true, rendererOptions: { collapseSubtasks: false } });
  const running = list.run().catch(() => undefined);
  let failed = false;
  return {
    onEvent(event) {
      if (event.type === 'step') {
        if (event.state === 'finished') {
          durations.set(event.step, event.durationMs);
          waiters.get(event.step)?.resolve();
        }
        if (event.state === 'failed') {
          failed = true;
          waiters.get(event.step)?.reject(new Error(`${STEP_TITLES[event.step]} failed`));
        }
      } else if (event.type === 'log') {
        const step = event.step === 'hook' ? undefined : event.step;
        if (step) {
          lastLine.set(step, event.message);
          outputs.get(step)?.(event.message);
        }
      }
    },
    async done(error) {
      if (error && !failed) {
        for (const waiter of waiters.values()) waiter.reject(error instanceof Error ? error : new Error(String(error)));
      }
      await running;
    },
  };
}

export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
