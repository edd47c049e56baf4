/**
 * `pnpm docs:kernel-map`: rewrites docs/kernel-map.md from the source file headers. No kernel
 * counterpart.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderKernelMap } from './kernel-map.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
writeFileSync(`${root}docs/kernel-map.md`, renderKernelMap(root));
console.log('docs/kernel-map.md written');
