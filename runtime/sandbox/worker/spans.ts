/**
 * The main thread's end of SPAN_CHANNEL: spans that functions made with the OpenTelemetry API
 * in their worker threads (see tracing.ts) are handed to `record` (the tracer's).
 */
import type { SpanData } from '../../../lib/trace/tracer.ts';
import { SPAN_CHANNEL } from './protocol.ts';

/** Listens until the returned function is called. */
export function receiveFunctionSpans(record: (spans: SpanData[]) => void): () => void {
  const channel = new BroadcastChannel(SPAN_CHANNEL);
  channel.onmessage = (e: MessageEvent) => {
    if (Array.isArray(e.data)) record(e.data as SpanData[]);
  };
  (channel as unknown as { unref?: () => void }).unref?.();
  return () => channel.close();
}
