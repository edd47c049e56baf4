/**
 * @iovalink/vfio-migration — VFIO PCI live migration as a model: the migration v2 state
 * machine and device feature ioctls of the VFIO core, an mlx5-style VF whose state (registers,
 * queue contexts, device memory) really moves through data fds, the mlx5 migration data buffers
 * in both kernel shapes (sg_append_table + dma_map_sgtable, and the two-step link API with its
 * per-page fallback), DMA dirty logging fed by the IOMMU's dirty bits, and a source → target
 * migration driven as a VMM does.
 */
export { VfioError } from './errors.js';
export { createGuestMemory } from './guest-memory.js';
export { IovaBitmap } from './iova-bitmap.js';
export {
  VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE,
  type VfioMigrateOptions,
  type VfioMigrationPhase,
  type VfioMigrationResult,
  vfioMigGetState,
  vfioMigrate,
  vfioMigSetState,
} from './migration.js';
export {
  MLX5_META_KINDS,
  Mlx5VfMigrationFile,
  Mlx5VhcaDataBuffer,
  type Mlx5vfMapping,
  Mlx5vfPciCoreDevice,
  type Mlx5vfPciDeviceOptions,
  type Mlx5vfStateSize,
} from './mlx5-cmd.js';
export { mlx5vfPciCloseDevice, mlx5vfPciCreateDevice, mlx5vfPciOpenDevice } from './mlx5-main.js';
export { Mlx5Vhca, type Mlx5VhcaGuest, type Mlx5VhcaOptions, mlx5VhcaStateEqual } from './mlx5-vhca.js';
export {
  type VfioDma,
  VfioIommu,
  vfioDmaDoMap,
  vfioDmaDoUnmap,
  vfioDmaRw,
  vfioIommuType1Open,
  vfioIommuType1Release,
} from './vfio-iommu-type1.js';
export {
  type VfioDataFile,
  type VfioDevice,
  type VfioDeviceFeatureData,
  type VfioLogOps,
  type VfioMigrationOps,
  vfioIoctlDeviceFeature,
  vfioMigGetNextState,
  vfioMigStateSupported,
} from './vfio-main.js';
export {
  isVfioDeviceMigState,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_CONTROL_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_RANGE_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
  VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
  VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIG_STATE_SIZE,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_MIGRATION_SIZE,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_NR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_DEVICE_STATES,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_FLAG_SETS,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  VFIO_PRECOPY_INFO_SIZE,
  type VfioDeviceFeatureDmaLoggingControl,
  type VfioDeviceFeatureDmaLoggingRange,
  type VfioDeviceFeatureDmaLoggingReport,
  type VfioDeviceFeatureMigDataSize,
  type VfioDeviceFeatureMigration,
  type VfioDeviceFeatureMigState,
  type VfioDeviceMigState,
  type VfioPrecopyInfo,
  vfioDeviceStateName,
} from './vfio-uapi.js';
