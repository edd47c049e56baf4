// The device side of `iovalink serve` without sockets: what one NBD command costs the model
// (block requests, DMA mapping through the IOMMU, the controller's DMA to and from its store,
// completion) for 128 KiB writes and 4 KiB reads, queue depth 16, on both driver versions.
// Write payloads are filled in place through the sink's spans, as the server's socket reads do;
// the kernel's socket copy is not part of this figure. SIMULATOR time (how fast this model runs
// on this host), never modeled kernel time. `iovalink bench:nbd` gives the end-to-end figures.
import { NbdExport } from '../src/nbd/nbd-export.js';

const QD = 16;
const SIZE = 256 * 2 ** 20;

function writes(exp: NbdExport, n: number, len: number, fill: Uint8Array): void {
  let failed = 0;
  for (let i = 0; i < n; i += QD) {
    for (let k = 0; k < QD; k++) {
      const sink = exp.write(((i + k) * len) % SIZE, len, false, (e) => {
        if (e !== 0) failed++;
      });
      for (let got = 0; got < len; ) {
        const s = sink.span(len - got)!;
        s.set(fill.subarray(0, s.length));
        sink.advance(s.length);
        got += s.length;
      }
    }
    exp.device.run();
  }
  if (failed !== 0) throw new Error(`${failed} writes failed`);
}

function reads(exp: NbdExport, n: number, len: number): void {
  let failed = 0;
  for (let i = 0; i < n; i += QD) {
    for (let k = 0; k < QD; k++) {
      const off = (((i + k) * 7919) % (SIZE / len)) * len;
      exp.read(off, len, (e, data) => {
        if (e !== 0) failed++;
        data?.release();
      });
    }
    exp.device.run();
  }
  if (failed !== 0) throw new Error(`${failed} reads failed`);
}

function timeUs(fn: () => void, n: number): number {
  const t0 = performance.now();
  fn();
  return ((performance.now() - t0) * 1000) / n;
}

export async function runNbdExportBench(): Promise<unknown> {
  const rows: Array<Record<string, string | number>> = [];
  const fill = new Uint8Array(128 * 1024).fill(0xa5);
  for (const path of ['sg', 'iova'] as const) {
    const exp = new NbdExport({ path, size: SIZE, debug: false });
    writes(exp, SIZE / fill.length, fill.length, fill); // prefill: every store chunk exists
    writes(exp, 2000, fill.length, fill); // warm-up
    reads(exp, 4000, 4096);
    const n = 8000;
    const w = timeUs(() => writes(exp, n, fill.length, fill), n);
    const r = timeUs(() => reads(exp, 4 * n, 4096), 4 * n);
    const st = exp.close();
    if (st.leaks.length > 0 || st.internalErrors > 0) throw new Error(`teardown: ${st.leaks.join('; ')}`);
    rows.push(
      {
        path,
        command: 'write 128 KiB',
        'sim µs/command': +w.toFixed(2),
        'sim commands/s': Math.round(1e6 / w),
      },
      { path, command: 'read 4 KiB', 'sim µs/command': +r.toFixed(2), 'sim commands/s': Math.round(1e6 / r) },
    );
  }
  console.table(rows);
  return { rows };
}
