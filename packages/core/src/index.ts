export {
  Runtime,
  blockOn,
  createRuntime,
  currentRuntime,
  spawn,
  tryCurrentRuntime,
  type MultiCoreRuntimeLike,
  type CoreTaskHandleLike,
  type PluginFactory,
  type RuntimePlugin,
  type RuntimeStats,
  type ShutdownOptions,
  type IoOwner,
  type TrackedResource,
  abortReason,
} from './runtime.js';
export { JoinHandle, Chained, type Thenable } from './task.js';
export {
  CancelledError,
  InvalidArgumentError,
  IoError,
  RuntimeError,
  closedError,
  ioErrorFromCode,
  ioErrorFromErrno,
  toIoError,
  type IoErrorDetails,
  type RuntimeErrorCode,
} from './errors.js';
export {
  BACKENDS,
  FEATURES,
  FEATURE_PACKAGES,
  resolveConfig,
  type BackendChoice,
  type FeatureName,
  type ResolvedConfig,
  type RuntimeConfig,
} from './config.js';
export {
  NO_COMPLETIONS,
  MAX_TIMER_MS,
  type BackendModule,
  type BackendName,
  type BackendOptions,
  type BufferHandle,
  type IoBackend,
  type IoBackendFeatures,
  type IoBuffer,
  type IoCompletion,
  type IoHandleId,
  type IoOperation,
  type IoOpName,
  type SocketAddress,
} from './backend.js';
export { bytesOf, validateOperation } from './io-operation.js';
export {
  FlushObjects,
  NATIVE_OP_CODES,
  OP_SLOT_BITS,
  OP_SLOT_MASK,
  OpSlots,
  bufferHandleOf,
  checkAllocateBuffer,
  int32OrBad,
  ioErrorForOperation,
  nativeSocketAddress,
  positiveIntOption,
  requireNativeAddon,
} from './native-backend.js';
export { AUTO_LADDER, autoCandidates, probeBackend, tryLoadPackage, type BackendProbe } from './loader.js';
export { NodeBackend } from './backend-node.js';
export {
  BufferPool,
  DEFAULT_BUFFER_POOL_CONFIG,
  type BufferAllocator,
  type BufferPoolConfig,
  type BufferPoolStats,
} from './buffer-pool.js';
export { File, openFlagsToNumber, type ChunkOptions, type IoCallOptions, type OpenFlags } from './file.js';
export { TcpListener, TcpStream, type BindOptions, type ConnectOptions, type TcpAddress } from './tcp.js';
export { doctor, formatDoctor, type DoctorReport } from './doctor.js';
