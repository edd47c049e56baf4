/**
 * The simulated computer every layer takes explicitly: physical memory, its buddy allocator, the
 * number of CPUs (for per-CPU caches and hardware queues), the counters every layer reports into,
 * fault-injection points, a virtual clock and a seeded PRNG. No module-level mutable state: two
 * machines in one process never interfere. Kernel counterpart: the global state of a running
 * kernel (memory map, `nr_cpu_ids`, `smp_processor_id()`), made an object.
 */
import { VirtualClock } from './clock.js';
import { Counters } from './counters.js';
import { MachineError } from './errors.js';
import { FaultInjector } from './fault-inject.js';
import { PageAllocator } from './page-alloc.js';
import { PhysMem } from './phys-mem.js';
import { Prng } from './prng.js';
import type { Tracer } from './tracer.js';

/** 1 GiB, the default RAM size. */
export const DEFAULT_MEM_SIZE = 1 << 30;

/** Options for a new machine. */
export interface MachineOptions {
  /** RAM size in bytes (default 1 GiB; 64 GiB and more cost only what is touched). */
  memSize?: number;
  /** Number of CPUs (default 2). */
  cpus?: number;
  /** PRNG seed (default 1). */
  seed?: number;
}

/** The simulated machine. */
export class Machine {
  readonly phys: PhysMem;
  readonly pages: PageAllocator;
  readonly counters = new Counters();
  readonly clock = new VirtualClock();
  readonly rng: Prng;
  readonly faults: FaultInjector;
  /** Number of CPUs (kernel: `nr_cpu_ids`). */
  readonly cpus: number;
  /** Receives trace events when set (see `tracer.ts`); undefined = tracing off. */
  tracer: Tracer | undefined;
  #cpu = 0;

  constructor(options: MachineOptions = {}) {
    const cpus = options.cpus ?? 2;
    if (!(Number.isInteger(cpus) && cpus >= 1 && cpus <= 4096)) {
      throw new MachineError(`machine: cpus must be an integer in 1..4096, got ${cpus}`, {
        rule: 'machine: cpus',
      });
    }
    this.cpus = cpus;
    this.rng = new Prng(options.seed ?? 1);
    this.faults = new FaultInjector(this.rng);
    this.phys = new PhysMem(options.memSize ?? DEFAULT_MEM_SIZE);
    this.pages = new PageAllocator(this.phys.nrFrames, this.counters, this.faults);
  }

  /** The CPU the model is running on (kernel: `smp_processor_id()`). */
  get currentCpu(): number {
    return this.#cpu;
  }

  /** Moves execution to `cpu` (kernel: migrating the task), for per-CPU caches and queues. */
  setCpu(cpu: number): void {
    if (!(Number.isInteger(cpu) && cpu >= 0 && cpu < this.cpus)) {
      throw new MachineError(`machine: cpu ${cpu} outside 0..${this.cpus - 1}`, { rule: 'machine: cpu' });
    }
    this.#cpu = cpu;
  }

  /** Runs `fn` on `cpu`, then returns to the previous CPU. */
  onCpu<T>(cpu: number, fn: () => T): T {
    const prev = this.#cpu;
    this.setCpu(cpu);
    try {
      return fn();
    } finally {
      this.#cpu = prev;
    }
  }
}
