/**
 * Reads a trace recorded from a running Linux kernel by `tools/kernel-record` (or by hand with the
 * same tracefs setup on real hardware): a `#` header (kernel release, QEMU, command line, the
 * device's IOMMU reserved regions, the PCI host bridge windows, strict/lazy/swiotlb) and the ftrace
 * lines of the `iommu:map`/`iommu:unmap` tracepoints and the kprobes of
 * `tools/kernel-record/probes.txt`. Kernel counterparts: the output formats of
 * include/trace/events/iommu.h and of kprobe events (Documentation/trace/kprobetrace.rst), v6.1.
 *
 * Only the events a replay uses are kept; every other line is ignored. Malformed lines of a known
 * event are errors naming the line, never silently dropped.
 */

/** The event kinds a replay understands (the kprobe/tracepoint names of probes.txt). */
export type KernelEventKind =
  | 'alloc_iova'
  | 'alloc_iova_ret'
  | 'free_iova'
  | 'map'
  | 'unmap'
  | 'map_page'
  | 'unmap_page'
  | 'map_sg'
  | 'unmap_sg'
  | 'dma_alloc'
  | 'dma_free'
  | 'fq_timeout'
  | 'tbl_map'
  | 'tbl_map_ret'
  | 'tbl_unmap'
  | 'mark';

/** The kinds that are DMA API calls (and the flush-queue timer): each opens a segment of a DMA replay. */
export const DMA_API_EVENT_KINDS: readonly KernelEventKind[] = [
  'map_page',
  'unmap_page',
  'map_sg',
  'unmap_sg',
  'dma_alloc',
  'dma_free',
  'fq_timeout',
];

const KINDS: ReadonlySet<string> = new Set<KernelEventKind>([
  'alloc_iova',
  'alloc_iova_ret',
  'free_iova',
  'map',
  'unmap',
  ...DMA_API_EVENT_KINDS,
  'tbl_map',
  'tbl_map_ret',
  'tbl_unmap',
]);

/** One recorded event. Numeric arguments are safe integers (all fit in 52 bits here). */
export interface KernelEvent {
  /** 1-based line number in the trace file. */
  readonly line: number;
  /** Trace timestamp in nanoseconds (ftrace `local` clock, µs resolution). */
  readonly ts: number;
  /** CPU the event ran on (the `[NNN]` field; 0 when the line has none). */
  readonly cpu: number;
  readonly kind: KernelEventKind;
  /** Named numeric arguments (`size`, `pfn`, `iova`, `paddr`, …). */
  readonly args: Readonly<Record<string, number>>;
  /** For `mark` events: the marker text. */
  readonly text: string;
  /** The kernel pointer of the IOVA domain (`dom=` of the allocator kprobes), else ''. */
  readonly dom: string;
}

/** A reserved region of the recorded device's IOMMU group (`reserved_regions` in sysfs). */
export interface ReservedRegion {
  readonly start: number;
  readonly end: number;
  /** `msi`, `direct`, `direct-relaxable`, `reserved`, `msi` … as sysfs prints it. */
  readonly type: string;
}

/** How the recorded kernel mapped DMA. */
export type KernelDmaMode = 'strict' | 'lazy' | 'forcedac' | 'swiotlb';

/** The `#` header of a trace file. */
export interface KernelTraceHeader {
  readonly mode: KernelDmaMode;
  readonly kernelRelease: string;
  /** `major.minor` of the kernel release, e.g. `[6, 1]`. */
  readonly kernelVersion: readonly [number, number];
  readonly qemu: string;
  readonly cmdline: string;
  /** Reserved regions of the traced device's group. */
  readonly reserved: readonly ReservedRegion[];
  /** Memory windows of the PCI host bridge (`/proc/iomem` "PCI Bus" lines): reserved too. */
  readonly pciWindows: readonly { start: number; end: number }[];
  /** IOMMU input address width from `DMAR: Host address width N`, if printed. */
  readonly hostAddressWidth: number | undefined;
  /** The traced NVMe device's PCI address, from `nvme nvme0: pci function …`, if printed. */
  readonly device: string | undefined;
  /** swiotlb areas, from `software IO TLB: area num N`, if printed. */
  readonly swiotlbAreas: number | undefined;
  /** Kprobe hits that were missed (a probe firing inside another probe's handler): lost events. */
  readonly kprobeMisses: number;
  /** Events the ring buffer overwrote (overrun): lost events. */
  readonly ringOverruns: number;
}

/** A parsed trace. */
export interface KernelTrace {
  readonly header: KernelTraceHeader;
  readonly events: readonly KernelEvent[];
}

/** A trace file that cannot be read: says which line and what was expected. */
export class KernelTraceError extends Error {
  override readonly name = 'KernelTraceError';
}

const MODES: ReadonlySet<string> = new Set(['strict', 'lazy', 'forcedac', 'swiotlb']);

/** Parses `0x…` hex or decimal into a safe integer, or throws naming the line. */
function num(s: string, what: string, line: number): number {
  // an all-ones 64-bit value is the kernel's error return (DMA_MAPPING_ERROR, (phys_addr_t)-1)
  if (/^0xf{16}$/i.test(s)) return -1;
  const v = /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s.slice(2), 16) : /^-?\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(v)) {
    throw new KernelTraceError(`line ${line}: ${what} '${s}' is not a number below 2^53`);
  }
  return v;
}

/** `12.345678` (seconds.microseconds) → nanoseconds, without floating-point rounding. */
function tsNs(s: string, line: number): number {
  const m = /^(\d+)\.(\d{1,9})$/.exec(s);
  if (m === null) throw new KernelTraceError(`line ${line}: timestamp '${s}' is not seconds.fraction`);
  return Number(m[1]) * 1e9 + Number((m[2] as string).padEnd(9, '0'));
}

/** Pulls `key=value` pairs out of an event body (values: hex or decimal). */
function keyValues(body: string, line: number): Record<string, number> {
  const args: Record<string, number> = {};
  for (const m of body.matchAll(/\b([a-z_]+)=(0x[0-9a-fA-F]+|-?\d+)\b/g)) {
    if (m[1] === 'dom') continue; // a kernel pointer: kept as text (above 2^53)
    args[m[1] as string] = num(m[2] as string, m[1] as string, line);
  }
  return args;
}

function requireArgs(kind: string, args: Record<string, number>, keys: string[], line: number): void {
  for (const k of keys) {
    if (args[k] === undefined) {
      throw new KernelTraceError(`line ${line}: ${kind} event without '${k}=' (expected ${keys.join(', ')})`);
    }
  }
}

const REQUIRED: Partial<Record<KernelEventKind, string[]>> = {
  alloc_iova: ['size', 'limit', 'flush'],
  alloc_iova_ret: ['pfn'],
  free_iova: ['pfn', 'size'],
  map: ['iova', 'paddr', 'size'],
  unmap: ['iova', 'size'],
  map_page: ['off', 'size', 'dir'],
  unmap_page: ['addr', 'size', 'dir'],
  map_sg: ['nents', 'dir'],
  unmap_sg: ['nents', 'dir'],
  dma_alloc: ['size'],
  dma_free: ['size'],
  tbl_map: ['orig', 'mapsize', 'allocsize', 'align', 'dir'],
  tbl_map_ret: ['tlb'],
  tbl_unmap: ['tlb', 'size', 'dir'],
};

/** Parses one ftrace line (task/cpu prefix optional) into an event, or undefined if not ours. */
function parseEventLine(raw: string, line: number): KernelEvent | undefined {
  // "[cpu] ts: name: body", optionally after ftrace's "task-pid" and before its flags column
  const m =
    /^\s*(?:\S+-\d+\s+)?(?:\[(\d+)\]\s+)?(?:[a-zA-Z.][a-zA-Z0-9.]*\s+)?(\d+\.\d+):\s+([a-z_0-9]+):\s?(.*)$/.exec(
      raw,
    );
  if (m === null) return undefined;
  const [, cpuField, tsField, name = '', body = ''] = m;
  const cpu = cpuField === undefined ? 0 : Number(cpuField);
  const ts = tsNs(tsField as string, line);
  if (name === 'tracing_mark_write') {
    return { line, ts, kind: 'mark', cpu, args: {}, text: body.trim(), dom: '' };
  }
  if (!KINDS.has(name)) return undefined;
  const kind = name as KernelEventKind;
  // kprobe lines start with "(func+0x0/0x…)": its hex must not be read as an argument
  const args = keyValues(body.replace(/^\([^)]*\)\s*/, ''), line);
  requireArgs(kind, args, REQUIRED[kind] ?? [], line);
  const dom = /\bdom=(0x[0-9a-f]+)/i.exec(body)?.[1] ?? '';
  return { line, ts, cpu, kind, args, text: '', dom };
}

/** What the header lines of a trace said, gathered line by line. */
interface HeaderFields {
  mode: string | undefined;
  kernelRelease: string;
  qemu: string;
  cmdline: string;
  hostAddressWidth: number | undefined;
  device: string | undefined;
  kprobeMisses: number;
  swiotlbAreas: number | undefined;
  ringOverruns: number;
  groupOf: Map<string, string>;
  reservedByGroup: Map<string, ReservedRegion[]>;
  pciWindows: { start: number; end: number }[];
}

const at = (m: RegExpExecArray, i: number): string => m[i] as string;

/** One rule per header line kind, first match wins. */
const HEADER_RULES: ReadonlyArray<[RegExp, (h: HeaderFields, m: RegExpExecArray, line: number) => void]> = [
  [
    /^mode (\S+)$/,
    (h, m) => {
      h.mode = at(m, 1);
    },
  ],
  [
    /^kernel-release (\S+)$/,
    (h, m) => {
      h.kernelRelease = at(m, 1);
    },
  ],
  [
    /^qemu (.*)$/,
    (h, m) => {
      h.qemu = at(m, 1);
    },
  ],
  [
    /^cmdline (.*)$/,
    (h, m) => {
      h.cmdline = at(m, 1);
    },
  ],
  [/^group (\S+) device (\S+)$/, (h, m) => void h.groupOf.set(at(m, 2), at(m, 1))],
  [
    /^reserved (\S+) (0x[0-9a-f]+) (0x[0-9a-f]+) (\S+)$/i,
    (h, m, line) => {
      const list = h.reservedByGroup.get(at(m, 1)) ?? [];
      list.push({
        start: num(at(m, 2), 'reserved start', line),
        end: num(at(m, 3), 'reserved end', line),
        type: at(m, 4),
      });
      h.reservedByGroup.set(at(m, 1), list);
    },
  ],
  [
    /^iomem ([0-9a-f]+)-([0-9a-f]+) : PCI Bus/i,
    (h, m, line) =>
      void h.pciWindows.push({
        start: num(`0x${at(m, 1)}`, 'iomem start', line),
        end: num(`0x${at(m, 2)}`, 'iomem end', line),
      }),
  ],
  [
    /DMAR: Host address width (\d+)/,
    (h, m) => {
      h.hostAddressWidth = Number(at(m, 1));
    },
  ],
  [
    /nvme nvme\d+: pci function (\S+)/,
    (h, m) => {
      h.device = at(m, 1);
    },
  ],
  [
    /software IO TLB: area num (\d+)/,
    (h, m) => {
      h.swiotlbAreas = Number(at(m, 1));
    },
  ],
  [
    /^kprobe-profile \S+ (\d+) (\d+)$/,
    (h, m) => {
      h.kprobeMisses += Number(at(m, 2));
    },
  ],
  [
    /^ring \S+ overrun: (\d+)$/,
    (h, m) => {
      h.ringOverruns += Number(at(m, 1));
    },
  ],
];

/**
 * Parses a trace file's text. Throws `KernelTraceError` for a missing or unknown mode, a header
 * line it cannot read, or an event line of a known kind without its arguments.
 */
export function parseKernelTrace(text: string): KernelTrace {
  const lines = text.split('\n');
  const h: HeaderFields = {
    mode: undefined,
    kernelRelease: '',
    qemu: '',
    cmdline: '',
    hostAddressWidth: undefined,
    device: undefined,
    kprobeMisses: 0,
    swiotlbAreas: undefined,
    ringOverruns: 0,
    groupOf: new Map(),
    reservedByGroup: new Map(),
    pciWindows: [],
  };
  const events: KernelEvent[] = [];
  for (let i = 0; i < lines.length; i++) {
    const raw = (lines[i] as string).replace(/\r$/, '');
    const line = i + 1;
    if (raw.startsWith('#')) {
      const headerLine = raw.slice(1).trim();
      for (const [re, apply] of HEADER_RULES) {
        const m = re.exec(headerLine);
        if (m !== null) {
          apply(h, m, line);
          break;
        }
      }
      continue;
    }
    if (raw.trim() === '') continue;
    const ev = parseEventLine(raw, line);
    if (ev !== undefined) events.push(ev);
  }
  return { header: traceHeader(h), events };
}

/** The trace header from the fields its lines gave; throws `KernelTraceError` for a missing or unknown mode. */
function traceHeader(h: HeaderFields): KernelTraceHeader {
  const mode = h.mode;
  if (mode === undefined) {
    throw new KernelTraceError("trace has no '# mode <strict|lazy|forcedac|swiotlb>' header line");
  }
  if (!MODES.has(mode)) {
    throw new KernelTraceError(`trace mode '${mode}' is not one of strict, lazy, forcedac, swiotlb`);
  }
  const vm = /^(\d+)\.(\d+)/.exec(h.kernelRelease);
  const kernelVersion: [number, number] = vm ? [Number(vm[1]), Number(vm[2])] : [0, 0];
  const group = h.device !== undefined ? h.groupOf.get(h.device) : undefined;
  const reserved = group !== undefined ? (h.reservedByGroup.get(group) ?? []) : [];
  return {
    mode: mode as KernelDmaMode,
    kernelRelease: h.kernelRelease,
    kernelVersion,
    qemu: h.qemu,
    cmdline: h.cmdline,
    reserved,
    pciWindows: h.pciWindows,
    hostAddressWidth: h.hostAddressWidth,
    device: h.device,
    swiotlbAreas: h.swiotlbAreas,
    kprobeMisses: h.kprobeMisses,
    ringOverruns: h.ringOverruns,
  };
}
