// Consumer smoke test, TypeScript: type-checked (never run) with `tsc --noEmit`, module and
// moduleResolution nodenext, strict, in a scratch project where the packed tarballs were
// installed with plain npm. It touches each package's main entry through its core names and
// types, so a missing export, a missing .d.ts or a wrong type fails the check.
import {
  BlkDmaIter,
  BlockDevice,
  blkRqDmaMapIterStart,
  blkRqMapSg,
  createNvmeSystem,
  type NvmeDev,
  nvmeProbe,
  type Request,
  runWorkload,
  type WorkloadResult,
} from '@iovalink/blk-mq';
import {
  createDmaSystem,
  createKindDevice,
  Device,
  DMA_TO_DEVICE,
  DmaIovaState,
  type DmaSystem,
  dmaIovaLink,
  dmaIovaTryAlloc,
  dmaMapSgtable,
  type Scatterlist,
  type SgTable,
} from '@iovalink/dma-api';
import {
  type CounterSnapshot,
  fragmentMemory,
  IOMMU_DOMAIN_DMA,
  IOMMU_READ,
  IommuDevice,
  type IommuDomain,
  iommuMap,
  Machine,
  PAGE_SIZE,
} from '@iovalink/iommu';
import { type IbUmemOdp, type Mlx5IbDev, Mm, mlx5IbAdd, type OdpMode } from '@iovalink/rdma-odp';
import {
  mlx5vfPciCreateDevice,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
  vfioMigGetNextState,
} from '@iovalink/vfio-migration';
import { type CostModel, loadPreset, modeledNs } from 'iovalink';

// iommu: a machine, an IOMMU, a DMA domain, one mapping
const machine: Machine = new Machine({ memSize: 256 << 20 });
const iommu: IommuDevice = new IommuDevice(machine);
const domain: IommuDomain | null | undefined = iommu.domainAlloc(IOMMU_DOMAIN_DMA);
if (domain) {
  const ret: number = iommuMap(domain, 0x10000000, machine.pages.allocPages(0), PAGE_SIZE, IOMMU_READ);
  void ret;
}

// dma-api: a strict device, the two-step API and the scatterlist path
const dev: Device = new Device(machine, { iommu, translation: 'strict' });
const state: DmaIovaState = new DmaIovaState();
if (dmaIovaTryAlloc(dev, state, 0, PAGE_SIZE)) {
  const linked: number = dmaIovaLink(dev, state, machine.pages.allocPages(0), 0, PAGE_SIZE, DMA_TO_DEVICE);
  void linked;
}
export function mapTable(sgt: SgTable): number {
  const first: Scatterlist | null = sgt.sgl;
  void first;
  return dmaMapSgtable(dev, sgt, DMA_TO_DEVICE);
}

// blk-mq: an NVMe device and both ways to map one request
const nvme: NvmeDev = nvmeProbe(dev, { mapping: 'iova' });
const result: WorkloadResult = runWorkload(new BlockDevice(nvme.disk), {
  seed: 1,
  ios: 8,
  blockSize: 4096,
  queueDepth: 1,
});
void result.mismatches;
export function mapRequest(rq: Request, sglist: Scatterlist): { legacySegments: number; twoStep: boolean } {
  return {
    legacySegments: blkRqMapSg(rq, sglist),
    twoStep: blkRqDmaMapIterStart(rq, dev, new DmaIovaState(), new BlkDmaIter()),
  };
}

// the one-call builders
const system: DmaSystem = createDmaSystem({ machine: { memSize: 128 << 20 } });
const lazy: Device = createKindDevice(system, 'lazy');
const scattered: number[] = fragmentMemory(system.machine, 16);
export const nvmeSystem: { bdev: BlockDevice; teardown(): void } = createNvmeSystem({ dma: system });
void lazy;
void scattered;

// rdma-odp: an mlx5-style device in either ODP mode, an address space, a umem type
const mode: OdpMode = 'hmm';
const ibdev: Mlx5IbDev = mlx5IbAdd(new Device(machine, { iommu, translation: 'lazy' }), { mode });
const mm: Mm = new Mm(machine);
export type SmokeUmem = IbUmemOdp;
void ibdev;
void mm;

// vfio-migration: the migration v2 state machine on an mlx5-style device
const vf = mlx5vfPciCreateDevice({
  pf: new Device(machine, { iommu, translation: 'strict' }),
  memorySize: 1 << 20,
});
const next: number = vfioMigGetNextState(vf, VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP);
void next;

// iovalink: the cost model turns counted events into modeled kernel time
const model: CostModel = loadPreset('intel-vtd');
const counts: CounterSnapshot = machine.counters.snapshot();
export const modeled: number = modeledNs(model, counts);
