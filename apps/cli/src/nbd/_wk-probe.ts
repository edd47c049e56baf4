import { parentPort, workerData } from 'node:worker_threads';
import { PAGE_SIZE } from '@iovalink/iommu';
import { createRig } from '../rig.js';

const r: number = PAGE_SIZE;
parentPort!.postMessage({
  r,
  w: workerData,
  rig: typeof createRig,
  url: import.meta.resolve('@iovalink/iommu'),
});
