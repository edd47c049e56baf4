/**
 * `iovalink/nbd`: the NBD server that exports a model block device (an NVMe device on the
 * simulated IOMMU, either DMA path) over a Unix or TCP socket to real NBD clients (`nbd-client`,
 * qemu-io, fio's nbd engine, nbdinfo), the export object behind it, and the NBD client the tests
 * use. Protocol: the NBD spec's fixed-newstyle negotiation and transmission phase (the kernel's
 * drivers/block/nbd.c is the client side; there is no kernel server).
 */
export {
  NbdClient,
  type NbdClientAddress,
  type NbdExportInfo,
  type NbdMetaContext,
  type NbdReply,
} from './nbd-client.js';
export { NbdExport } from './nbd-export.js';
export { blkStatusToNbd } from './nbd-export-data.js';
export type { NbdExportOptions, NbdExportStats } from './nbd-export-options.js';
export {
  DEFAULT_GRACE_MS,
  DEFAULT_HANDSHAKE_LIMIT_MS,
  DEFAULT_MAX_CONNECTIONS,
  type NbdAddress,
  type NbdServerHandle,
  type NbdServerOptions,
  type NbdServerStats,
  type NbdTimers,
  startNbdServer,
} from './nbd-server.js';
