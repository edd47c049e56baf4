/**
 * Fixtures for the layers above: small machines and helpers to make physical memory layouts.
 * Exported as `@iovalink/iommu/testing`.
 */
import { Machine, type MachineOptions } from '../machine.js';
import { fragmentMemory } from '../page-fragment.js';
import { PAGE_SIZE } from '../phys-mem.js';

/** A small machine for tests: 64 MiB of RAM, 2 CPUs, seed 1, unless overridden. */
export function createTestMachine(options: MachineOptions = {}): Machine {
  return new Machine({ memSize: 64 << 20, cpus: 2, seed: 1, ...options });
}

/**
 * Allocates `n` single pages that are physically scattered: no two are adjacent, so nothing can
 * merge (`fragmentMemory` of the main entry). Returns their physical addresses.
 */
export function allocScatteredPages(machine: Machine, n: number): number[] {
  return fragmentMemory(machine, n);
}

/** Writes a deterministic byte pattern (seeded) of `len` bytes at `phys` and returns it. */
export function writePattern(machine: Machine, phys: number, len: number, seed: number): Uint8Array {
  const data = patternBytes(len, seed);
  machine.phys.write(phys, data);
  return data;
}

/** A deterministic pattern: byte i = low byte of (seed * 31 + i * 7 + (i >> 8)). */
export function patternBytes(len: number, seed: number): Uint8Array {
  const data = new Uint8Array(len);
  for (let i = 0; i < len; i++) data[i] = (seed * 31 + i * 7 + (i >> 8)) & 0xff;
  return data;
}

export { PAGE_SIZE };
