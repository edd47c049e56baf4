/**
 * Progress that renders: long runs hand the event loop back between chunks (`yieldToEventLoop`),
 * so the progress bar's redraw timer gets to run while the model works, and the bars themselves
 * appear only on a terminal and never under `--json` (whose output must stay parseable). No kernel
 * counterpart.
 */
import cliProgress from 'cli-progress';

/**
 * Resolves after one turn of the event loop (timers, I/O, then `setImmediate`), so a progress bar
 * redraw scheduled on a timer runs between two chunks of synchronous work.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Whether a command should draw progress bars: asked for, not JSON, and stderr a terminal. */
export function wantsProgress(
  o: { progress?: boolean; json?: boolean },
  isTty = process.stderr.isTTY,
): boolean {
  return (o.progress ?? true) && !o.json && isTty === true;
}

/** One bar per workload on stderr; `undefined` when progress is off. */
export function progressBars(on: boolean): cliProgress.MultiBar | undefined {
  if (!on) return undefined;
  return new cliProgress.MultiBar(
    {
      clearOnComplete: true,
      hideCursor: true,
      format: ' {bar} {percentage}% | {name}',
      stream: process.stderr,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
}
