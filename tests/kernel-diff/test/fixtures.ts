/**
 * The committed kernel traces (recorded by tools/kernel-record/record.sh from Debian 12's Linux 6.1
 * under QEMU 7.2, see fixtures/README.md) and helpers that read them independently of the replay
 * code: event counts come from plain line matching, so a replay that skipped events is caught.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The recorded scenarios, by fixture name. */
export const SCENARIOS = ['strict-single', 'strict-concurrent', 'lazy', 'forcedac', 'swiotlb'] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** Path of a fixture file. */
export function fixturePath(name: string): string {
  return fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
}

/** The text of a scenario's trace. */
export function traceText(s: Scenario): string {
  return readFileSync(fixturePath(`${s}.trace`), 'utf8');
}

/** Event lines of `kind` (`… <kind>: …`), with their 1-based line numbers. */
export function eventLines(text: string, kind: string): Array<{ line: number; text: string }> {
  const out: Array<{ line: number; text: string }> = [];
  const re = new RegExp(`^\\[\\d+\\] \\d+\\.\\d+: ${kind}: `);
  text.split('\n').forEach((t, i) => {
    if (re.test(t)) out.push({ line: i + 1, text: t });
  });
  return out;
}

/** Replaces line `line` (1-based) of `text`. */
export function replaceLine(text: string, line: number, next: string): string {
  const lines = text.split('\n');
  lines[line - 1] = next;
  return lines.join('\n');
}

/** Removes line `line` (1-based) of `text`. */
export function removeLine(text: string, line: number): string {
  const lines = text.split('\n');
  lines.splice(line - 1, 1);
  return lines.join('\n');
}

/** The numeric value of `key=` on a trace line. */
export function argOf(line: string, key: string): number {
  const m = new RegExp(`\\b${key}=(0x[0-9a-f]+|\\d+)\\b`, 'i').exec(line);
  if (m === null) throw new Error(`no ${key}= in: ${line}`);
  return Number(m[1]);
}
