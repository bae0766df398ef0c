/**
 * Every error Tide raises on purpose. A TideError carries a stable `code` (match on it, never
 * on the message), an optional HTTP `status` for the two places that map errors to responses
 * (proxy/rescue.ts and the control API's error handler), an optional `hint` the CLI prints
 * under the message, and `cause`.
 */

export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_INVALID_NAME'
  | 'ERR_CONFIG_INVALID'
  | 'ERR_NOT_FOUND'
  | 'ERR_UNAUTHORIZED'
  | 'ERR_PAYLOAD_TOO_LARGE'
  | 'ERR_BAD_REQUEST'
  | 'ERR_STORE_CONFLICT'
  | 'ERR_STORE_COMPACTED'
  | 'ERR_STORE_CORRUPT'
  | 'ERR_STORE_CLOSED'
  | 'ERR_STORE_LEASE_NOT_FOUND'
  | 'ERR_STORE_UNAVAILABLE'
  | 'ERR_DATA_DIR'
  | 'ERR_ADDRESS_IN_USE'
  | 'ERR_BUNDLE'
  | 'ERR_FUNCTION_INVALID'
  | 'ERR_DEPLOY_TIMEOUT'
  | 'ERR_PROXY_NO_ROUTE'
  | 'ERR_PROXY_NOT_READY'
  | 'ERR_PROXY_QUEUE_FULL'
  | 'ERR_ACTIVATOR_QUEUE_FULL'
  | 'ERR_OVERLOADED'
  | 'ERR_UNSCHEDULABLE'
  | 'ERR_IMAGE_INVALID'
  | 'ERR_ACTIVATOR_TIMEOUT'
  | 'ERR_PROXY_TIMEOUT'
  | 'ERR_PROXY_CONNECT'
  | 'ERR_PROXY_RESET'
  | 'ERR_PROXY_UPSTREAM_PROTOCOL'
  | 'ERR_PROXY_CIRCUIT_OPEN'
  | 'ERR_PROXY_NO_HEALTHY_UPSTREAM'
  | 'ERR_PROXY_FAULT'
  | 'ERR_PROXY_OVERLOADED'
  | 'ERR_HEADERS_TOO_LARGE'
  | 'ERR_REQUEST_TIMEOUT'
  | 'ERR_NOT_IMPLEMENTED'
  | 'ERR_VERSION_NOT_SUPPORTED'
  | 'ERR_METHOD_NOT_ALLOWED'
  | 'ERR_SANDBOX_TIMEOUT'
  | 'ERR_SANDBOX_OUT_OF_MEMORY'
  | 'ERR_SANDBOX_INSTANCE_REPLACED'
  | 'ERR_SANDBOX_CLOSED'
  | 'ERR_SANDBOX_UNAVAILABLE'
  | 'ERR_SANDBOX_START'
  | 'ERR_FUNCTION_THREW'
  | 'ERR_FUNCTION_BAD_RESPONSE'
  | 'ERR_API_UNREACHABLE'
  | 'ERR_AUTHZ_DENIED'
  | 'ERR_AUTHZ_NOT_ALLOWED'
  | 'ERR_MTLS_REQUIRED'
  | 'ERR_MTLS_IDENTITY'
  | 'ERR_RATE_LIMITED'
  | 'ERR_FORBIDDEN'
  | 'ERR_TOKEN_REVOKED'
  | 'ERR_TOKEN_EXPIRED'
  | 'ERR_INTERNAL';

export interface TideErrorOptions {
  status?: number;
  hint?: string;
  cause?: unknown;
  /** Extra machine-readable fields returned by the API next to code and message. */
  details?: Record<string, unknown>;
}

export class TideError extends Error {
  readonly code: ErrorCode;
  readonly status: number | undefined;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: TideErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TideError';
    this.code = code;
    this.status = options.status;
    this.hint = options.hint;
    this.details = options.details;
  }
}

export function isTideError(err: unknown, code?: ErrorCode): err is TideError {
  return err instanceof TideError && (code === undefined || err.code === code);
}

/** Adds context when an error crosses a boundary: "reconciling revision x: <original>". */
export function wrapError(context: string, err: unknown): TideError {
  if (err instanceof TideError) {
    return new TideError(err.code, `${context}: ${err.message}`, {
      status: err.status,
      hint: err.hint,
      details: err.details,
      cause: err,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new TideError('ERR_INTERNAL', `${context}: ${message}`, { cause: err });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
