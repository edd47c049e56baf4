/**
 * Output helpers shared by the commands: tables, JSON and CSV, times in scaled units, and per-op
 * figures in significant digits so a real difference never rounds to zero.
 */
import Table from 'cli-table3';

/** A row of named cells. */
export type Row = Record<string, string | number>;

/** Renders rows as a boxed table with the given column order (a rule under the header only). */
export function renderTable(rows: readonly Row[], columns?: readonly string[]): string {
  const head = columns ?? Object.keys(rows[0] ?? {});
  const t = new Table({ head: [...head], style: { head: [], border: [], compact: true } });
  for (const r of rows) t.push(head.map((c) => fmtCell(r[c])));
  return t.toString();
}

function fmtCell(v: string | number | undefined): string {
  if (v === undefined) return '';
  return typeof v === 'number' ? fmtNum(v) : v;
}

/**
 * A count or per-op figure for people: integers as they are (with thousands separators), other
 * values to three significant digits, so 0.000977 IOVA allocations per op stays 0.000977 instead of
 * rounding to 0.00, and 6 793.4 PTE writes stay 6,793.
 */
export function fmtNum(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return v.toLocaleString('en-US');
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  const p = Number(v.toPrecision(3));
  if (p !== 0 && Math.abs(p) < 1e-4) return p.toExponential(2);
  return p.toLocaleString('en-US', { maximumSignificantDigits: 3 });
}

const TIME_UNITS: ReadonlyArray<[number, string]> = [
  [1e9, 's'],
  [1e6, 'ms'],
  [1e3, 'µs'],
];

/** A duration in nanoseconds in the unit that reads best: "854 ns", "5.21 µs", "392 ms", "1.2 s". */
export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return String(ns);
  for (const [scale, unit] of TIME_UNITS) {
    if (Math.abs(ns) >= scale) return `${Number((ns / scale).toPrecision(3))} ${unit}`;
  }
  return `${Number(ns.toPrecision(3))} ns`;
}

/** Renders rows as CSV (RFC 4180 quoting). */
export function renderCsv(rows: readonly Row[], columns?: readonly string[]): string {
  const head = columns ?? Object.keys(rows[0] ?? {});
  const q = (v: string | number | undefined) => {
    const s = v === undefined ? '' : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [head.map(q).join(','), ...rows.map((r) => head.map((c) => q(r[c])).join(','))].join('\n');
}
