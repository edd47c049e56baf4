/**
 * NBD_CMD_WRITE_ZEROES on an NBD export, both ways the protocol allows (§ `NBD_CMD_WRITE_ZEROES`):
 *
 * - Deallocate (the client allows a hole): the export discards, as for NBD_CMD_TRIM. Our
 *   controller's deallocate reads back as zeroes (`nvme-hw.ts` Dataset Management), and the range
 *   becomes a hole of the backing store. The kernel does the same for controllers known to read
 *   deallocated blocks as zeroes: `nvme_setup_write_zeroes` (drivers/nvme/host/core.c) turns the
 *   write-zeroes request into `nvme_setup_discard` under `NVME_QUIRK_DEALLOCATE_ZEROES`.
 *   Deliberate difference: the block layer itself never zeroes through a discard; a real server
 *   would call `fallocate(PUNCH_HOLE)`, i.e. `blkdev_issue_zeroout` with `BLKDEV_ZERO_NOFALLBACK`
 *   (block/fops.c `blkdev_fallocate`), which needs a write-zeroes capable queue.
 * - Write (NBD_CMD_FLAG_NO_HOLE: the range must stay allocated), this file: ordinary write block
 *   requests whose every segment is one page of zeroes, DMA-mapped like any write — what
 *   `blkdev_issue_zeroout(…, BLKDEV_ZERO_NOUNMAP)` falls back to (`__blkdev_issue_zero_pages`
 *   adding `ZERO_PAGE(0)` to bios, block/blk-lib.c) on a device without Write Zeroes. Our model
 *   device has none (`max_write_zeroes_sectors` 0). Had it one, the NVMe Write Zeroes command
 *   (`nvme_setup_write_zeroes`) sets only the LBA range, no data pointer: it would map nothing.
 *   Pieces of `maxPiece` bytes, at most four in flight.
 */
import { BLK_STS_OK, type IoSegment } from '@iovalink/blk-mq';
import { PAGE_SIZE } from '@iovalink/iommu';
import { blkStatusToNbd, type NbdDone, type NbdExportIo } from './nbd-export-data.js';
import { NBD_ENOMEM } from './nbd-proto.js';

/** Zero writes of an export from its one page of zeroes (kernel: `ZERO_PAGE(0)`). */
export class NbdZeroWriter {
  readonly #io: NbdExportIo;
  /** The page of zeroes every zero write takes its data from; 0 until first used. */
  #zeroPage = 0;
  /** Segments of a full zero-write piece, every one the zero page (built with the page). */
  #zeroSegs: IoSegment[] = [];

  constructor(io: NbdExportIo) {
    this.#io = io;
  }

  /**
   * Writes zeroes to `length` bytes at `offset` (whole logical blocks, validated by the caller),
   * then flushes with `fua`. `done(0)` or `done(error)` (the first failure; pieces already written
   * stay written).
   */
  write(offset: number, length: number, fua: boolean, done: NbdDone): void {
    const io = this.#io;
    const segs = this.#zeroPieceSegs();
    if (segs === undefined) {
      io.guard(() => done(NBD_ENOMEM));
      return;
    }
    let next = 0;
    let inFlight = 0;
    let err = 0;
    let finished = false;
    const pump = (): void => {
      while (err === 0 && inFlight < 4 && next < length) {
        const at = next;
        const n = Math.min(io.maxPiece, length - at);
        next += n;
        inFlight++;
        const pieceSegs = n === io.maxPiece ? segs : zeroSegsFor(this.#zeroPage, n);
        io.device.submit('write', offset + at, n, pieceSegs, (status) => {
          inFlight--;
          if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
          pump();
        });
      }
      if (inFlight > 0) {
        io.kick();
        return;
      }
      if (finished) return;
      finished = true;
      if (err === 0 && fua) io.flush(done);
      else io.guard(() => done(err));
    };
    pump();
  }

  /** Frees the zero page, if it was allocated (the export is closing). */
  release(): void {
    if (this.#zeroPage !== 0) this.#io.device.pages.freePages(this.#zeroPage, 0);
    this.#zeroPage = 0;
  }

  /** The segments of a full zero-write piece, allocating and clearing the zero page on first use. */
  #zeroPieceSegs(): IoSegment[] | undefined {
    const io = this.#io;
    if (this.#zeroPage === 0) {
      const phys = io.device.pages.allocPages(0);
      if (phys === 0) return undefined;
      io.device.phys.span(phys, PAGE_SIZE).fill(0);
      this.#zeroPage = phys;
      this.#zeroSegs = zeroSegsFor(phys, io.maxPiece);
    }
    return this.#zeroSegs;
  }
}

/** `bytes` of zeroes as segments that all point at the zero page `phys` (a page each, the last shorter). */
function zeroSegsFor(phys: number, bytes: number): IoSegment[] {
  const segs: IoSegment[] = [];
  for (let at = 0; at < bytes; at += PAGE_SIZE) segs.push({ phys, len: Math.min(PAGE_SIZE, bytes - at) });
  return segs;
}
