/**
 * Replay (d): the recorded bounce-buffer traffic of a `swiotlb=force` kernel. Each
 * `swiotlb_tbl_map_single` (original address, size, alignment mask, direction) is replayed on a
 * model pool of the recorded size and area count, and must land in the same slot at the same
 * offset (the kernel's bounce address minus its pool start equals the model's); each
 * `swiotlb_tbl_unmap_single` releases the model's corresponding mapping. Kernel counterpart:
 * kernel/dma/swiotlb.c (v6.1 in the committed trace).
 *
 * Version differences: 6.1's `swiotlb_tbl_map_single` takes a separate `alloc_size`; the model
 * follows v6.10+ where the allocation is the mapping size (the dma-direct path passes equal sizes
 * in 6.1 too). A recorded call with `allocsize` ≠ `mapsize` is reported as a divergence rather
 * than replayed with a guess. NVMe sets `min_align_mask` to 4 KiB - 1
 * (`dma_set_min_align_mask` in drivers/nvme/host/pci.c); the replay passes that mask, since the
 * kprobe cannot read it from the device.
 */
import {
  DMA_MAPPING_ERROR,
  type DmaDataDirection,
  DmaError,
  IO_TLB_SIZE,
  IoTlbMem,
  type SwiotlbSlotSearch,
  swiotlbTblMapSingle,
  swiotlbTblUnmapSingle,
} from '@iovalink/dma-api';
import type { Machine } from '@iovalink/iommu';
import { countCompared, type Divergence, DivergenceFound, hx, type ReplayResult } from './divergence.js';
import { replayMachine } from './kernel-domain.js';
import type { KernelEvent, KernelTrace } from './kernel-trace.js';
import { traceCpus } from './replay-iova.js';

/** NVMe's `min_align_mask`: NVME_CTRL_PAGE_SIZE - 1. */
export const NVME_MIN_ALIGN_MASK = 4096 - 1;

/**
 * The model's slot-search rules for a kernel version: `'v6.1'` up to 6.1 (checked against the
 * recorded Debian 6.1 kernel), `'current'` otherwise (the v6.9+ rules the model follows).
 */
export function swiotlbRulesFor(version: readonly [number, number]): SwiotlbSlotSearch {
  const [major, minor] = version;
  return major < 6 || (major === 6 && minor <= 1) ? 'v6.1' : 'current';
}

/** Replays the bounce-buffer calls of `trace`; the replay stops at the first divergence. */
export function replaySwiotlb(trace: KernelTrace): ReplayResult {
  const compared: Record<string, number> = {};
  const notes: string[] = [];
  const maps = trace.events.filter((e) => e.kind === 'tbl_map');
  const firstMap = maps[0];
  if (firstMap === undefined) return { replay: 'swiotlb', compared, divergence: undefined, notes };
  let divergence: Divergence | undefined;
  try {
    const pool = swiotlbReplayPool(trace, firstMap, maps, notes);
    const pending = new Map<number, KernelEvent>();
    for (const e of trace.events) {
      if (e.kind === 'tbl_map') {
        pending.set(e.cpu, e);
      } else if (e.kind === 'tbl_map_ret') {
        const call = pending.get(e.cpu);
        if (call === undefined) continue;
        pending.delete(e.cpu);
        replayTblMap(pool, call, e, compared);
      } else if (e.kind === 'tbl_unmap') {
        replayTblUnmap(pool, e);
        countCompared(compared, 'tbl_unmap');
      }
    }
  } catch (err) {
    if (!(err instanceof DivergenceFound)) throw err;
    divergence = err.divergence;
  }
  return { replay: 'swiotlb', compared, divergence, notes };
}

/** Reports a divergence: throws it, so the replay stops at the first one. */
function diverge(e: KernelEvent, what: string, kernel: string, model: string): never {
  throw new DivergenceFound({ replay: 'swiotlb', line: e.line, kind: e.kind, what, kernel, model });
}

/** The model pool beside the kernel's: where the kernel's pool starts, to translate its slot addresses. */
interface SwiotlbReplayPool {
  machine: Machine;
  mem: IoTlbMem;
  /** Physical address of the kernel's pool (from the first `tbl_map`'s `pool=`). */
  kernelStart: number;
}

/**
 * A model pool of the kernel's size (from the first `tbl_map`'s `nslabs=`), with the areas the kernel
 * printed (else one per CPU, `swiotlb_adjust_nareas`) and the slot-search rules of the trace's
 * kernel, on a machine large enough for every recorded original.
 */
function swiotlbReplayPool(
  trace: KernelTrace,
  firstMap: KernelEvent,
  maps: readonly KernelEvent[],
  notes: string[],
): SwiotlbReplayPool {
  const poolStart = firstMap.args.pool;
  const nslabs = firstMap.args.nslabs;
  if (poolStart === undefined || nslabs === undefined) {
    return diverge(
      firstMap,
      'tbl_map events lack pool= and nslabs= (record with tools/kernel-record/probes.txt)',
      'pool start',
      'unknown',
    );
  }
  let maxOrig = 0;
  for (const e of maps) maxOrig = Math.max(maxOrig, (e.args.orig ?? 0) + (e.args.mapsize ?? 0));
  const cpus = traceCpus(trace);
  const machine = replayMachine(maxOrig + nslabs * IO_TLB_SIZE, cpus);
  const nareas = trace.header.swiotlbAreas ?? cpus;
  const slotSearch = swiotlbRulesFor(trace.header.kernelVersion);
  const mem = IoTlbMem.create(machine, { size: nslabs * IO_TLB_SIZE, nareas, slotSearch });
  if (mem === undefined) throw new Error('replaySwiotlb: the replay machine could not hold the pool');
  notes.push(
    `pool of ${nslabs} slots (${(nslabs * IO_TLB_SIZE) / 2 ** 20} MiB), ${mem.nareas} area(s), min_align_mask ${hx(NVME_MIN_ALIGN_MASK)}, slot-search rules ${slotSearch}`,
  );
  const [major, minor] = trace.header.kernelVersion;
  if (major === 6 && minor > 1 && minor < 9) {
    notes.push(
      `kernel ${major}.${minor}: its swiotlb slot-search rules lie between v6.1 and v6.9 and are not modeled; a slot divergence may be that difference`,
    );
  }
  return { machine, mem, kernelStart: poolStart };
}

/** The model's address of the byte the kernel's bounce address names (same slot, same offset). */
function modelAddrOf(pool: SwiotlbReplayPool, kernelTlb: number): number {
  const rel = kernelTlb - pool.kernelStart;
  const index = Math.floor(rel / IO_TLB_SIZE);
  return pool.mem.slotAddr(index) + (rel - index * IO_TLB_SIZE);
}

/**
 * A recorded `swiotlb_tbl_map_single` (`call`) and its return (`ret`): the model bounces the same
 * original and must land in the same slot at the same offset, or fail where the kernel failed
 * (counted as compared once the model has made the call).
 */
function replayTblMap(
  pool: SwiotlbReplayPool,
  call: KernelEvent,
  ret: KernelEvent,
  compared: Record<string, number>,
): void {
  const { machine, mem } = pool;
  machine.setCpu(Math.min(ret.cpu, machine.cpus - 1));
  const { orig = 0, mapsize = 0, allocsize = 0, align = 0, dir = 0 } = call.args;
  if (allocsize !== mapsize) {
    diverge(
      call,
      'alloc_size differs from mapping_size: the model (v6.10+) has no separate alloc_size',
      `${allocsize}`,
      `${mapsize}`,
    );
  }
  let tlb: number;
  try {
    tlb = swiotlbTblMapSingle(mem, orig, mapsize, align, NVME_MIN_ALIGN_MASK, dir as DmaDataDirection, 0);
  } catch (err) {
    if (!(err instanceof DmaError)) throw err;
    tlb = diverge(
      call,
      'the model refused the recorded bounce',
      `orig ${hx(orig)} size ${mapsize}`,
      err.message,
    );
  }
  const kernelTlb = ret.args.tlb ?? -1;
  countCompared(compared, 'tbl_map');
  const kernelFailed = kernelTlb === -1;
  const modelFailed = tlb === DMA_MAPPING_ERROR;
  if (kernelFailed || modelFailed) {
    if (kernelFailed !== modelFailed) {
      diverge(
        ret,
        'one side found no free slots',
        kernelFailed ? 'no slots' : hx(kernelTlb),
        modelFailed ? 'no slots' : hx(tlb),
      );
    }
    return;
  }
  const want = modelAddrOf(pool, kernelTlb);
  if (tlb !== want) {
    const slot = (addr: number): string => {
      const i = mem.slotIndex(addr);
      return `slot ${i} + ${hx(addr - mem.slotAddr(i))}`;
    };
    diverge(ret, `bounce of orig ${hx(orig)} size ${mapsize} landed elsewhere`, slot(want), slot(tlb));
  }
}

/** A recorded `swiotlb_tbl_unmap_single`: the model must have a bounce mapping at the same slot. */
function replayTblUnmap(pool: SwiotlbReplayPool, e: KernelEvent): void {
  const { tlb = 0, size = 0, dir = 0 } = e.args;
  pool.machine.setCpu(Math.min(e.cpu, pool.machine.cpus - 1));
  try {
    swiotlbTblUnmapSingle(pool.mem, modelAddrOf(pool, tlb), size, dir as DmaDataDirection, 0);
  } catch (err) {
    if (!(err instanceof DmaError)) throw err;
    diverge(e, 'the model has no bounce mapping at the recorded slot', hx(tlb), err.message);
  }
}
