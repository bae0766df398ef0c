/**
 * Fault injection for testing resilience: delay a share of requests, and/or answer a share
 * with an error status (tide-proxy-error: ERR_PROXY_FAULT) without reaching the upstream.
 */
import { parseDuration } from '../../lib/duration.ts';
import { TideError } from '../../lib/errors.ts';
import type { Dispatch } from '../http/types.ts';

export interface FaultConfig {
  delay?: { duration: string; percent: number } | undefined;
  abort?: { status: number; percent: number } | undefined;
}

export function faultLayer(f: FaultConfig, random: () => number = Math.random): (next: Dispatch) => Dispatch {
  const delayMs = f.delay ? parseDuration(f.delay.duration, 'fault.delay.duration') : 0;
  const delayShare = (f.delay?.percent ?? 0) / 100;
  const abortShare = (f.abort?.percent ?? 0) / 100;
  const abortStatus = f.abort?.status ?? 503;
  return (next) => (req, handler) => {
    const go = () => {
      if (req.aborted) return;
      if (abortShare > 0 && random() < abortShare) {
        handler.onError(new TideError('ERR_PROXY_FAULT', `fault injected by route ${req.route ?? ''}: abort with ${abortStatus}`, { status: abortStatus }));
        return;
      }
      next(req, handler);
    };
    if (delayShare > 0 && random() < delayShare) {
      const t = setTimeout(go, delayMs);
      req.cancel = () => clearTimeout(t);
    } else {
      go();
    }
  };
}
