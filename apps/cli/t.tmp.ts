import { NbdExport } from './src/nbd/nbd-export.ts';
const exp = new NbdExport({ size: 64 * 2 ** 20 });
const len = 4096;
const fill = new Uint8Array(len).fill(1);
for (let i = 0; i < 64; i++) { const s = exp.write(i * len, len, false, () => {}); s.push(fill); exp.device.run(); }
let t0 = performance.now();
for (let i = 0; i < 4000; i++) { exp.read((i % 64) * len, len, (e, d) => { d?.release(); }); exp.device.run(); }
console.log(len, ((performance.now() - t0) / 4000 * 1000).toFixed(1), 'us/read');
t0 = performance.now();
for (let i = 0; i < 4000; i++) { const s = exp.write((i % 64) * len, len, false, () => {}); s.push(fill); exp.device.run(); }
console.log(len, ((performance.now() - t0) / 4000 * 1000).toFixed(1), 'us/write');
