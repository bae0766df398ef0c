/**
 * Policies as stored (/tide/policies/<ns>/<name>): who may call which function, with which
 * mTLS mode, at which rate. The snapshot carries them to the proxy, which compiles them once
 * per snapshot (proxy/layers/authz.ts).
 */
import type { PolicySpec } from '../../../lib/config/resources.ts';
import { DEFAULT_NAMESPACE } from './function.ts';

export interface PolicyRecord {
  name: string;
  namespace: string;
  spec: PolicySpec;
  managedBy: 'apply';
}

export const policyKeys = {
  policies: (ns = DEFAULT_NAMESPACE) => `/tide/policies/${ns}/`,
  policy: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/policies/${ns}/${name}`,
};
