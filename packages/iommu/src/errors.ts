/**
 * Typed errors for what the kernel would WARN or BUG on. Every error names the kernel rule it
 * enforces in `rule`, so a test (or a user) can tell misuse classes apart without parsing text.
 * The marker is a `Symbol.for` key, so `isIovalinkError` works across two installed copies.
 * Kernel counterpart: WARN_ON/BUG_ON sites; no single file.
 */

const MARKER = Symbol.for('@iovalink/error');

/** Options for every iovalink error. */
export interface IovalinkErrorOptions {
  /** Short machine-readable name of the kernel rule broken, e.g. `"iommu_map: unaligned"`. */
  rule: string;
  /** Negative errno the kernel returns in this case, if it returns one. */
  errno?: number;
  cause?: unknown;
}

/** Base of all iovalink errors. */
export class IovalinkError extends Error {
  readonly rule: string;
  readonly errno: number | undefined;
  readonly [MARKER] = true;
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'IovalinkError';
    this.rule = options.rule;
    this.errno = options.errno;
  }
}

/** True if `e` is an iovalink error from any installed copy of this package. */
export function isIovalinkError(e: unknown): e is IovalinkError {
  return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[MARKER] === true;
}

/** Misuse of the simulated machine: physical addresses outside RAM, bad page orders, double frees. */
export class MachineError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'MachineError';
  }
}

/** Misuse of the IOMMU layer: iommu core, page tables, IOVA allocator. */
export class IommuError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'IommuError';
  }
}

/** Formats an address as the kernel prints it (`0x` + lower-case hex). */
export function hex(value: number): string {
  return `0x${value.toString(16)}`;
}
