// Consumer smoke test, ESM: run from a scratch project where the packed tarballs were installed
// with plain npm. Each package's main entry is used the way its README shows, and every step
// checks its result, so a missing file, a missing export or a broken build fails here.
import assert from 'node:assert/strict';
import { BlockDevice, createNvmeSystem, nvmeProbe, nvmeRemove, runWorkload } from '@iovalink/blk-mq';
import {
  createDmaSystem,
  createKindDevice,
  Device,
  DMA_TO_DEVICE,
  DmaIovaState,
  dmaIovaDestroy,
  dmaIovaLink,
  dmaIovaSync,
  dmaIovaTryAlloc,
} from '@iovalink/dma-api';
import {
  DmaEngine,
  fragmentMemory,
  IOMMU_DOMAIN_DMA,
  IOMMU_READ,
  IommuDevice,
  iommuMap,
  iommuUnmap,
  Machine,
  PAGE_SIZE,
} from '@iovalink/iommu';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  ibAllocPd,
  ibDeregMr,
  ibRegUserMr,
  isErr,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  Mm,
  mlx5IbAdd,
  PROT_READ,
  PROT_WRITE,
} from '@iovalink/rdma-odp';
import {
  mlx5vfPciCreateDevice,
  vfioDmaDoMap,
  vfioIommuType1Open,
  vfioMigrate,
} from '@iovalink/vfio-migration';
import { loadPreset, modeledNs } from 'iovalink';

const machine = new Machine({ memSize: 256 << 20 });
const iommu = new IommuDevice(machine);
const strict = (name) => new Device(machine, { name, iommu, translation: 'strict' });

// @iovalink/iommu: map a page in a DMA domain, read it through the IOMMU, unmap, fault
{
  const domain = iommu.domainAlloc(IOMMU_DOMAIN_DMA);
  const page = machine.pages.allocPages(0);
  machine.phys.write(page, new Uint8Array([1, 2, 3]));
  assert.equal(iommuMap(domain, 0x10000000, page, PAGE_SIZE, IOMMU_READ), 0);
  const engine = new DmaEngine(machine, 'smoke', domain);
  const buf = new Uint8Array(3);
  assert.equal(engine.read(0x10000000, buf), 0);
  assert.deepEqual([...buf], [1, 2, 3]);
  assert.equal(iommuUnmap(domain, 0x10000000, PAGE_SIZE), PAGE_SIZE);
  assert.ok(engine.read(0x10000000, buf) < 0, 'a read after unmap faults');
}

// @iovalink/dma-api: the two-step API, two pages linked into one IOVA range
{
  const dev = strict('dma0');
  const pages = [machine.pages.allocPages(0), machine.pages.allocPages(0)];
  machine.phys.write(pages[1], new Uint8Array([9, 8, 7]));
  const state = new DmaIovaState();
  assert.equal(dmaIovaTryAlloc(dev, state, 0, 2 * PAGE_SIZE), true);
  pages.forEach((p, i) => {
    assert.equal(dmaIovaLink(dev, state, p, i * PAGE_SIZE, PAGE_SIZE, DMA_TO_DEVICE), 0);
  });
  assert.equal(dmaIovaSync(dev, state, 0, 2 * PAGE_SIZE), 0);
  const buf = new Uint8Array(3);
  assert.equal(dev.engine.read(state.addr + PAGE_SIZE, buf), 0);
  assert.deepEqual([...buf], [9, 8, 7]);
  dmaIovaDestroy(dev, state, 2 * PAGE_SIZE, DMA_TO_DEVICE);
}

// @iovalink/blk-mq: an NVMe device mapping requests through the two-step API, every byte checked
{
  const nvme = nvmeProbe(strict('nvme0'), { mapping: 'iova' });
  const bdev = new BlockDevice(nvme.disk);
  const res = runWorkload(bdev, { seed: 1, ios: 64, blockSize: 16384, queueDepth: 4 });
  assert.equal(res.mismatches, 0);
  assert.deepEqual(res.errors, {});
  bdev.drain();
  nvmeRemove(nvme);
}

// the one-call builders: a DMA system and a device of one kind, an NVMe system over really
// scattered memory (no two pages adjacent), torn down with its leak check
{
  const system = createDmaSystem({ machine: { memSize: 128 << 20 } });
  const lazy = createKindDevice(system, 'lazy');
  assert.equal(lazy.machine, system.machine);
  const held = fragmentMemory(system.machine, 256);
  assert.ok(
    held.every((p, i) => i === 0 || p - held[i - 1] > PAGE_SIZE),
    'no two kept pages adjacent',
  );
  const r = createNvmeSystem({ dma: system, kind: 'strict', nvme: { mapping: 'iova' } });
  const res = runWorkload(r.bdev, { seed: 2, ios: 32, blockSize: 8192, queueDepth: 2 });
  assert.equal(res.mismatches, 0);
  r.bdev.drain();
  r.teardown();
}

// @iovalink/rdma-odp: an ODP MR in hmm mode, written and read by the NIC through page faults
{
  const ibdev = mlx5IbAdd(strict('mlx5_0'), { mode: 'hmm' });
  const mm = new Mm(machine);
  const pd = ibAllocPd(ibdev, mm);
  const addr = mm.mmap(0, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  const access = IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ | IB_ACCESS_ON_DEMAND;
  const mr = ibRegUserMr(pd, addr, 16 * PAGE_SIZE, addr, access);
  assert.ok(!isErr(mr), `ibRegUserMr failed: ${mr}`);
  ibdev.nic.rdmaWrite(mr.rkey, addr + 100, new Uint8Array([4, 5, 6]));
  assert.deepEqual([...mm.read(addr + 100, 3)], [4, 5, 6]);
  mm.migratePages(addr, PAGE_SIZE);
  assert.deepEqual([...ibdev.nic.rdmaRead(mr.rkey, addr + 100, 3).data], [4, 5, 6]);
  assert.equal(ibDeregMr(mr), 0);
}

// @iovalink/vfio-migration: a live migration with link-mode data buffers, state compared on the target
{
  const guestA = vfioIommuType1Open(iommu);
  const guestB = vfioIommuType1Open(iommu);
  vfioDmaDoMap(guestA, 0, 1 << 20);
  vfioDmaDoMap(guestB, 0, 1 << 20);
  const source = mlx5vfPciCreateDevice({
    pf: strict('vf0'),
    memorySize: 1 << 20,
    mapping: 'iova',
    guest: guestA,
  });
  const target = mlx5vfPciCreateDevice({
    pf: strict('vf1'),
    memorySize: 1 << 20,
    guest: guestB,
    randomize: false,
  });
  source.run(1000);
  const r = vfioMigrate(source, target, {
    stepsPerIteration: 500,
    guest: { source: guestA, target: guestB },
  });
  assert.equal(r.ret, 0);
  assert.equal(r.equal, true);
  assert.equal(r.guestEqual, true);
}

// iovalink: modeled kernel time of everything above, from a cost model shipped in the tarball
{
  const ns = modeledNs(loadPreset('arm-smmuv3'), machine.counters.snapshot());
  assert.ok(Number.isFinite(ns) && ns > 0, `modeled kernel time ${ns}`);
}

console.log('consumer smoke (ESM): iommu, dma-api, blk-mq, rdma-odp, vfio-migration, iovalink: ok');
