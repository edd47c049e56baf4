/**
 * CPU cache maintenance around streaming DMA for non-coherent devices. Kernel counterpart:
 * `arch_sync_dma_for_device`/`arch_sync_dma_for_cpu` (include/linux/dma-map-ops.h) and the test
 * dma-direct and dma-iommu make before calling them. Differs: counted (`cpuCacheSyncs`), not
 * simulated.
 */
import type { Device } from './device.js';
import { DMA_ATTR_MMIO, DMA_ATTR_SKIP_CPU_SYNC } from './dma-direction.js';

/**
 * True when a map, sync or unmap with `attrs` needs CPU cache maintenance (kernel: the
 * `!dev_is_dma_coherent(dev) && !(attrs & (DMA_ATTR_SKIP_CPU_SYNC | DMA_ATTR_MMIO))` test before
 * `arch_sync_dma_for_device`/`_for_cpu` in dma-direct and dma-iommu).
 */
export function devNeedsCpuSync(dev: Device, attrs: number): boolean {
  return !dev.coherent && (attrs & (DMA_ATTR_SKIP_CPU_SYNC | DMA_ATTR_MMIO)) === 0;
}

/**
 * Counts the CPU cache maintenance a mapping call does, if it needs any (kernel:
 * `arch_sync_dma_for_device`/`arch_sync_dma_for_cpu`). Differs: counted, not simulated.
 */
export function archSyncDma(dev: Device, attrs: number): void {
  if (devNeedsCpuSync(dev, attrs)) dev.machine.counters.cpuCacheSyncs++;
}
