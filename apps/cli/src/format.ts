/** Output helpers shared by the commands: tables, JSON and CSV. */
import Table from 'cli-table3';

/** A row of named cells. */
export type Row = Record<string, string | number>;

/** Renders rows as a boxed table with the given column order. */
export function renderTable(rows: readonly Row[], columns?: readonly string[]): string {
  const head = columns ?? Object.keys(rows[0] ?? {});
  const t = new Table({ head: [...head], style: { head: [], border: [] } });
  for (const r of rows) t.push(head.map((c) => fmtCell(r[c])));
  return t.toString();
}

function fmtCell(v: string | number | undefined): string {
  if (v === undefined) return '';
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return v.toLocaleString('en-US');
    // small per-op figures (e.g. one IOVA allocation per MR over thousands of ops) keep 3 digits
    if (Math.abs(v) < 1) return v.toPrecision(3);
    return v.toLocaleString('en-US', { maximumFractionDigits: 2 });
  }
  return v;
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
