// Shared test helpers for dma-api tests: read/write through a device's DMA engine.
import { expect } from 'vitest';
import type { Device } from '../src/device.js';

/** What the device reads at `bus` (throws via expect if the read faults). */
export function deviceRead(dev: Device, bus: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  expect(dev.engine.read(bus, out)).toBe(0);
  return out;
}

/** True if a device read at `bus` faults. */
export function deviceReadFaults(dev: Device, bus: number, len = 1): boolean {
  return dev.engine.read(bus, new Uint8Array(len)) !== 0;
}
