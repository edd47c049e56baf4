/**
 * Replay (a): the recorded `alloc_iova_fast` / `free_iova_fast` calls, with the kernel's own
 * arguments (size, limit pfn, flush flag; pfn and size of each free), on model IOVA domains built
 * like the kernel's (one per recorded `struct iova_domain` pointer). Every pfn the model returns
 * must equal the pfn the kernel returned. Kernel counterpart: drivers/iommu/iova.c (v6.1 in the
 * committed traces).
 *
 * Version differences (6.1 vs the v6.17 allocator we model), checked rather than tolerated:
 * - The 6.1 depot is a fixed array of 32 magazines per size class with no trimming; v6.7+ keeps a
 *   list that a 100 ms delayed work trims. The replay never advances the virtual clock (6.1's
 *   allocator has no timer), and reports whether any magazine ever reached the depot: if one did,
 *   the depot rules of the two versions could differ, and the note says so.
 * - Magazines hold 127 pfns since v6.0 (128 before); the note reports the fullest magazine seen,
 *   so a trace where the capacity mattered is visible.
 */
import { IommuError, type IovaDomain } from '@iovalink/iommu';
import { countCompared, type Divergence, DivergenceFound, hx, type ReplayResult } from './divergence.js';
import { kernelIovaDomain, replayMachine } from './kernel-domain.js';
import type { KernelEvent, KernelTrace } from './kernel-trace.js';

/** Largest depot and magazine fill seen over a replay (all domains, all size classes). */
interface RcacheHighWater {
  depot: number;
  magazine: number;
}

function noteRcache(iovad: IovaDomain, hw: RcacheHighWater): void {
  for (const r of iovad.rcacheState()) {
    if (r.depotSize > hw.depot) hw.depot = r.depotSize;
    for (const c of r.cpus) {
      if (c.loaded > hw.magazine) hw.magazine = c.loaded;
      if (c.prev > hw.magazine) hw.magazine = c.prev;
    }
  }
}

/** Highest CPU number in the trace + 1 (at least 1). */
export function traceCpus(trace: KernelTrace): number {
  let max = 0;
  for (const e of trace.events) if (e.cpu > max) max = e.cpu;
  return max + 1;
}

/**
 * Replays the allocator calls of `trace`. Returns the events compared by kind and the first
 * divergence (the replay stops there).
 */
export function replayIovaAllocator(trace: KernelTrace): ReplayResult {
  const compared: Record<string, number> = {};
  const notes: string[] = [];
  const machine = replayMachine(0, traceCpus(trace));
  const domains = new Map<string, IovaDomain>();
  const hw: RcacheHighWater = { depot: 0, magazine: 0 };
  const domainOf = (e: KernelEvent): IovaDomain => {
    let d = domains.get(e.dom);
    if (d === undefined) {
      d = kernelIovaDomain(machine, trace.header);
      domains.set(e.dom, d);
    }
    return d;
  };
  let divergence: Divergence | undefined;
  // the kretprobe fires on the same CPU right after its entry probe; pending calls per CPU
  const pending = new Map<number, KernelEvent>();
  try {
    for (const e of trace.events) {
      if (e.kind === 'alloc_iova') {
        pending.set(e.cpu, e);
      } else if (e.kind === 'alloc_iova_ret') {
        const call = pending.get(e.cpu);
        if (call === undefined) continue; // a return whose entry fired before tracing started
        pending.delete(e.cpu);
        const iovad = domainOf(call);
        machine.setCpu(e.cpu);
        replayAllocIova(iovad, call, e, compared);
        noteRcache(iovad, hw);
      } else if (e.kind === 'free_iova') {
        const iovad = domainOf(e);
        machine.setCpu(e.cpu);
        replayFreeIova(iovad, e, compared);
        noteRcache(iovad, hw);
      }
    }
  } catch (err) {
    if (!(err instanceof DivergenceFound)) throw err;
    divergence = err.divergence;
  }
  if (domains.size > 0) notes.push(...iovaReplayNotes(domains.size, trace, hw));
  return { replay: 'iova-allocator', compared, divergence, notes };
}

/** Reports a divergence: throws it, so the replay stops at the first one. */
function diverge(e: KernelEvent, what: string, kernel: string, model: string): never {
  throw new DivergenceFound({ replay: 'iova-allocator', line: e.line, kind: e.kind, what, kernel, model });
}

/** A recorded `alloc_iova_fast` (`call`) and its return: the model must return the same pfn. */
function replayAllocIova(
  iovad: IovaDomain,
  call: KernelEvent,
  ret: KernelEvent,
  compared: Record<string, number>,
): void {
  const { size = 0, limit = 0, flush = 0 } = call.args;
  const pfn = iovad.allocIovaFast(size, limit, flush !== 0);
  countCompared(compared, 'alloc_iova');
  if (pfn !== ret.args.pfn) {
    diverge(
      ret,
      `alloc_iova_fast(size ${size}, limit ${hx(limit)}, flush ${flush}) returned another pfn`,
      hx(ret.args.pfn ?? 0),
      hx(pfn),
    );
  }
}

/** A recorded `free_iova_fast`: the model must accept it. */
function replayFreeIova(iovad: IovaDomain, e: KernelEvent, compared: Record<string, number>): void {
  const { pfn = 0, size = 0 } = e.args;
  try {
    iovad.freeIovaFast(pfn, size);
  } catch (err) {
    if (!(err instanceof IommuError)) throw err;
    diverge(e, 'the model refuses this free_iova_fast', `free pfn ${hx(pfn)} size ${size}`, err.message);
  }
  countCompared(compared, 'free_iova');
}

/** The replay's notes: the domains it built, and whether the rcache depot rules could matter. */
function iovaReplayNotes(domains: number, trace: KernelTrace, hw: RcacheHighWater): string[] {
  return [
    `${domains} IOVA domain(s), granule 4096, start pfn 1, reserved: PCI windows ${trace.header.pciWindows.length}, regions ${trace.header.reserved.length}`,
    hw.depot === 0
      ? `rcache depot never used (fullest magazine ${hw.magazine} of 127): the 6.1 fixed depot and the v6.7+ trimmed depot cannot differ here`
      : `rcache depot reached ${hw.depot} magazines: 6.1 caps it at 32 and never trims it, v6.7+ trims it every 100 ms (not advanced here)`,
  ];
}
