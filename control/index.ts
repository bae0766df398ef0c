export { type BundleValidator, type DeployInput, type DeployResult, Functions } from './api/functions.ts';
export * from './api/schema/function.ts';
export { type ApiOptions, ControlApi, type LogLine, type LogSource } from './api/server.ts';
export { Autoscaler, type AutoscalerOptions, type DecisionRecord } from './autoscaler/autoscaler.ts';
export { resolveScalingSpec, SCALING_DEFAULTS, type ScalingSpec } from './autoscaler/config.ts';
export { BlobStore, sha256 } from './blobs.ts';
export { buildSnapshot, EMPTY_SNAPSHOT, type RouteTarget, type Snapshot, SnapshotPublisher } from './snapshot/build.ts';
export * from './store/index.ts';
