/**
 * Reaping the memory of an OOM-killed process without sleeping. Kernel counterpart:
 * mm/oom_kill.c (`__oom_reap_task_mm`), v6.x.
 *
 * Deliberate differences: no OOM victim selection and no reaper thread — the caller reaps one
 * address space directly.
 */
import { zapPteRange } from './memory.js';
import type { MmCore } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_UNMAP } from './mmu-notifier.js';

/**
 * Reaps the memory of this (OOM-killed) process without sleeping (kernel: `__oom_reap_task_mm`):
 * per private anonymous VMA, a non-blockable `MMU_NOTIFY_UNMAP` invalidation; a VMA whose
 * subscribers would have to sleep (-EAGAIN) is skipped and kept intact. Returns how many VMAs
 * were reaped and skipped.
 */
export function oomReapTaskMm(core: MmCore): { reaped: number; skipped: number } {
  let reaped = 0;
  let skipped = 0;
  for (const v of [...core.vmas]) {
    if (v.vmFile !== undefined) continue;
    const r = mmInvalidate(core, MMU_NOTIFY_UNMAP, v.vmStart, v.vmEnd, false, (drop) =>
      zapPteRange(core, v.vmStart, v.vmEnd, drop),
    );
    if (r === 0) reaped++;
    else skipped++;
  }
  return { reaped, skipped };
}
