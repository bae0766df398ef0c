/**
 * The route timeout: covers the whole exchange, every retry included. When it fires, the
 * request is aborted (the in-flight try or back-off is cancelled) and the client gets 504
 * ERR_PROXY_TIMEOUT, or, if the response had already started, a cut-off response.
 */
import { TideError } from '../../lib/errors.ts';
import { abortRequest, type Dispatch, type ResponseControl } from '../http/types.ts';

export function timeoutLayer(ms: number): (next: Dispatch) => Dispatch {
  return (next) => (req, handler) => {
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      const err = new TideError('ERR_PROXY_TIMEOUT', `the upstream did not answer within the route timeout of ${ms} ms`, { status: 504 });
      abortRequest(req, err);
      handler.onError(err);
    }, ms);
    next(req, {
      onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl) {
        if (!done) handler.onHeaders(status, headers, contentLength, ctl);
      },
      onData(chunk: Buffer) {
        return done ? true : handler.onData(chunk);
      },
      onEnd() {
        if (done) return;
        done = true;
        clearTimeout(timer);
        handler.onEnd();
      },
      onError(err: TideError) {
        if (done) return;
        done = true;
        clearTimeout(timer);
        handler.onError(err);
      },
    });
  };
}
