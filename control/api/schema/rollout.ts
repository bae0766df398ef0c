/**
 * Rollouts as stored (/tide/rollouts/<ns>/<name>) and the controller's state for each
 * (/tide/rolloutstatus/<ns>/<name>): which revision is stable, which is being rolled out, at
 * which step, and what happened to earlier ones.
 */
import type { RolloutSpec } from '../../../lib/config/resources.ts';
import { DEFAULT_NAMESPACE } from './function.ts';

export interface RolloutRecord {
  name: string;
  namespace: string;
  spec: RolloutSpec;
  managedBy: 'apply';
}

export type RolloutPhase = 'Stable' | 'Progressing' | 'Promoted' | 'RolledBack' | 'Aborted';

export interface RolloutStatus {
  name: string;
  function: string;
  phase: RolloutPhase;
  /** The revision that served before the current rollout (and serves again after a rollback). */
  stable: string;
  /** The revision being rolled out, while Progressing. */
  canary?: string;
  /** Index of the current step (0-based) while Progressing. */
  step?: number;
  /** When the current step began, ms. */
  stepStartedAt?: number;
  /** Held at its step by `tide rollout pause` (still rolled back if the new revision fails). */
  paused?: boolean;
  /** Why the phase is what it is. */
  message: string;
  history: { at: string; revision: string; result: 'Promoted' | 'RolledBack' | 'Aborted'; message: string; changeCause?: string }[];
  updatedAt: string;
}

export const rolloutKeys = {
  rollouts: (ns = DEFAULT_NAMESPACE) => `/tide/rollouts/${ns}/`,
  rollout: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/rollouts/${ns}/${name}`,
  statuses: (ns = DEFAULT_NAMESPACE) => `/tide/rolloutstatus/${ns}/`,
  status: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/rolloutstatus/${ns}/${name}`,
};
