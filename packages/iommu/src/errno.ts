/**
 * Error numbers, as in Linux `include/uapi/asm-generic/errno-base.h` and `errno.h`.
 * Functions that return `0`/`-errno` in the kernel return `0` or `-Errno.X` here.
 */
export const Errno = {
  /** Operation not permitted. */
  EPERM: 1,
  /** No such entry. */
  ENOENT: 2,
  /** I/O error. */
  EIO: 5,
  /** Argument list too long (e.g. too many DMA logging ranges). */
  E2BIG: 7,
  /** Bad file descriptor. */
  EBADF: 9,
  /** Try again. */
  EAGAIN: 11,
  /** Out of memory (or of IOVA space, or of bounce slots). */
  ENOMEM: 12,
  /** Bad address. */
  EFAULT: 14,
  /** Resource busy (e.g. an mmu notifier sequence changed). */
  EBUSY: 16,
  /** Already exists (mapping over a mapping in io-pgtable-arm). */
  EEXIST: 17,
  /** No such device (no map op). */
  ENODEV: 19,
  /** Invalid argument. */
  EINVAL: 22,
  /** Inappropriate ioctl: no such ioctl or feature. */
  ENOTTY: 25,
  /** No space left on device. */
  ENOSPC: 28,
  /** Illegal seek (pread/pwrite on a stream). */
  ESPIPE: 29,
  /** Result out of range (address beyond the page table's input/output size). */
  ERANGE: 34,
  /** Function not implemented (no fault handler installed). */
  ENOSYS: 38,
  /** No message of desired type (temporary end of a PRE_COPY stream). */
  ENOMSG: 42,
  /** Value too large for defined data type. */
  EOVERFLOW: 75,
  /** Operation not supported. */
  EOPNOTSUPP: 95,
  /** Address already in use (generic_pt: mapping over a mapping). */
  EADDRINUSE: 98,
  /** Transport endpoint is not connected. */
  ENOTCONN: 107,
  /** Remote I/O error (device cannot reach P2P memory). */
  EREMOTEIO: 121,
} as const;

/** One errno name. */
export type ErrnoName = keyof typeof Errno;
/** One errno value (positive). */
export type ErrnoValue = (typeof Errno)[ErrnoName];

const names = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

/** Name of an errno value, positive or negative (`-22` → `"-EINVAL"`); `"0"` for success. */
export function errnoName(code: number): string {
  if (code === 0) return '0';
  const name = names.get(Math.abs(code));
  const label = name ?? `errno ${Math.abs(code)}`;
  return code < 0 ? `-${label}` : label;
}
