export { type AgentKeys, type AgentOptions, NodeAgent, type RevisionEndpoint } from './agent/agent.ts';
export { FunctionLogs } from './logs/sink.ts';
export { ContainerDriver } from './sandbox/container/driver.ts';
export type { DispatchMeta, Instance, InstanceEvent, InstanceSpec, SandboxDriver } from './sandbox/driver.ts';
export { WorkerDriver } from './sandbox/worker/driver.ts';
export { receiveFunctionSpans } from './sandbox/worker/spans.ts';
export { validateWorkerBundle } from './sandbox/worker/validate.ts';
