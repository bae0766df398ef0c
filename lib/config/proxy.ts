/**
 * The proxy's config file (`tide proxy -c proxy.yaml`): listeners, virtual hosts with ordered
 * routes, and upstream clusters. This JSON Schema is the one place the proxy's knobs and their
 * defaults are declared; `validateDocument` fills the defaults in, and proxy/config compiles
 * the result into an immutable snapshot. Durations are strings like "250ms", "15s", "2m".
 *
 * Example (examples/proxy.yaml has a fuller one):
 *
 *   listeners: [{ name: main, port: 8080 }]
 *   virtualHosts:
 *     - name: shop
 *       domains: [shop.example.com]
 *       routes:
 *         - name: api
 *           match: { path: { prefix: /api/ } }
 *           backends: [{ cluster: api-v1, weight: 90 }, { cluster: api-v2, weight: 10 }]
 *           retries: { attempts: 2 }
 *   clusters:
 *     - { name: api-v1, endpoints: ['127.0.0.1:9001'] }
 *     - { name: api-v2, endpoints: ['127.0.0.1:9002'] }
 */
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/**
 * A duration of at least 1ms (every one the proxy parses but maxEventLoopDelay, where 0s
 * means off): everything runs on whole milliseconds, so 0s or 0.4ms would become 0.
 */
export const POSITIVE_DURATION = '^(?:\\d*[1-9]\\d*(?:\\.\\d+)?(?:ms|s|m|h)|0?\\.0{0,2}[1-9]\\d*s|0?\\.0{0,4}[1-9]\\d*(?:m|h))$';
const Duration = (def?: string) =>
  Type.String({ pattern: POSITIVE_DURATION, description: 'a duration of at least 1ms like 250ms, 15s, 2m', ...(def ? { default: def } : {}) });
const DurationOrZero = (def: string) =>
  Type.String({ pattern: '^\\d+(\\.\\d+)?(ms|s|m|h)$', description: 'a duration like 250ms, 15s, 2m; 0s turns it off', default: def });
const Name = Type.String({ pattern: '^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$', description: 'letters, digits, ".", "_" and "-"' });
const HeaderName = Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", description: 'an HTTP header name (a token)' });
const HeaderValue = Type.String({ pattern: '^[\\t\\x20-\\x7e\\x80-\\xff]*$', description: 'free of control characters' });
const Percent = Type.Number({ minimum: 0, maximum: 100 });
const Strict = { additionalProperties: false } as const;

const StringMatch = Type.Object({ exact: Type.Optional(Type.String()), prefix: Type.Optional(Type.String()), regex: Type.Optional(Type.String()) }, Strict);
const PresenceMatch = Type.Object(
  { name: Type.String({ minLength: 1 }), exact: Type.Optional(Type.String()), regex: Type.Optional(Type.String()), present: Type.Optional(Type.Boolean()) },
  Strict,
);

export const RouteMatchSchema = Type.Object(
  {
    path: Type.Optional(StringMatch),
    methods: Type.Optional(Type.Array(Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Z-]+$" }))),
    headers: Type.Optional(Type.Array(PresenceMatch)),
    query: Type.Optional(Type.Array(PresenceMatch)),
  },
  Strict,
);

export const HeaderEdits = Type.Object(
  {
    /** Replace (or add) these headers. */
    set: Type.Optional(Type.Record(HeaderName, HeaderValue)),
    /** Append these (a second value when the header exists). */
    add: Type.Optional(Type.Record(HeaderName, HeaderValue)),
    remove: Type.Optional(Type.Array(HeaderName)),
  },
  Strict,
);

export const RetrySchema = Type.Object(
  {
    /** Retries after the first try (so 2 means up to 3 tries). */
    attempts: Type.Integer({ minimum: 0, maximum: 10, default: 2 }),
    /** What counts as retriable. gateway-error = 502, 503, 504; 5xx = any 5xx; retriable-status = `statuses`. */
    on: Type.Array(
      Type.Union([
        Type.Literal('connect-failure'),
        Type.Literal('reset'),
        Type.Literal('5xx'),
        Type.Literal('gateway-error'),
        Type.Literal('retriable-status'),
      ]),
      {
        default: ['connect-failure', 'reset', 'gateway-error'],
      },
    ),
    statuses: Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { default: [] }),
    perTryTimeout: Type.Optional(Duration()),
    /** Exponential back-off with full jitter between tries. */
    backoff: Type.Object({ base: Duration('25ms'), max: Duration('250ms') }, { ...Strict, default: {} }),
    /** Retry POST, PATCH (and other non-idempotent methods) too. */
    nonIdempotent: Type.Boolean({ default: false }),
    /** Retries stay under `ratio` of requests over the last 10 s, plus `minPerSecond`. */
    budget: Type.Object(
      { ratio: Type.Number({ minimum: 0, maximum: 10, default: 0.2 }), minPerSecond: Type.Integer({ minimum: 0, default: 10 }) },
      { ...Strict, default: {} },
    ),
  },
  Strict,
);

/** Injected faults: a delay and/or an abort with a status, each for a percent of requests. */
export const FaultSchema = Type.Object(
  {
    delay: Type.Optional(Type.Object({ duration: Duration(), percent: Percent }, Strict)),
    abort: Type.Optional(Type.Object({ status: Type.Integer({ minimum: 200, maximum: 599 }), percent: Percent }, Strict)),
  },
  Strict,
);

export const RouteSchema = Type.Object(
  {
    name: Name,
    match: Type.Object(RouteMatchSchema.properties, { ...Strict, default: {} }),
    /** Weighted split over clusters (integer weights; 0 turns one off). */
    backends: Type.Optional(
      Type.Array(Type.Object({ cluster: Name, weight: Type.Integer({ minimum: 0, maximum: 10000, default: 1 }) }, Strict), { minItems: 1 }),
    ),
    /** Keep a client on one backend of the split, by a header's or a cookie's value. */
    sticky: Type.Optional(Type.Object({ header: Type.Optional(HeaderName), cookie: Type.Optional(Type.String({ minLength: 1 })) }, Strict)),
    redirect: Type.Optional(
      Type.Object(
        {
          status: Type.Union([Type.Literal(301), Type.Literal(302), Type.Literal(303), Type.Literal(307), Type.Literal(308)], { default: 302 }),
          scheme: Type.Optional(Type.Union([Type.Literal('http'), Type.Literal('https')])),
          host: Type.Optional(Type.String({ minLength: 1 })),
          path: Type.Optional(Type.String({ pattern: '^/' })),
          prefixRewrite: Type.Optional(Type.String({ pattern: '^/' })),
          stripQuery: Type.Boolean({ default: false }),
        },
        Strict,
      ),
    ),
    directResponse: Type.Optional(
      Type.Object(
        {
          status: Type.Integer({ minimum: 200, maximum: 599 }),
          body: Type.String({ default: '' }),
          contentType: Type.String({ default: 'text/plain; charset=utf-8' }),
        },
        Strict,
      ),
    ),
    /** Rewrites before forwarding: the matched path prefix replaced by `prefix`; Host replaced by `host`. */
    rewrite: Type.Optional(Type.Object({ prefix: Type.Optional(Type.String({ pattern: '^/' })), host: Type.Optional(Type.String({ minLength: 1 })) }, Strict)),
    requestHeaders: Type.Optional(HeaderEdits),
    responseHeaders: Type.Optional(HeaderEdits),
    /** The whole request, all tries included (504 after). */
    timeout: Duration('15s'),
    retries: Type.Optional(RetrySchema),
    fault: Type.Optional(FaultSchema),
  },
  Strict,
);

export const ClusterSchema = Type.Object(
  {
    name: Name,
    /** `host:port` (IPv6 as `[::1]:port`). */
    endpoints: Type.Array(Type.String({ pattern: '^(\\[[0-9a-fA-F:.]+\\]|[a-zA-Z0-9.-]+):\\d{1,5}$', description: 'host:port' }), { minItems: 1 }),
    balancer: Type.Union([Type.Literal('round-robin'), Type.Literal('least-request'), Type.Literal('peak-ewma')], { default: 'round-robin' }),
    /** The HTTP/1.1 client: `tide` (the proxy's own pool, fastest) or `undici`. */
    client: Type.Union([Type.Literal('tide'), Type.Literal('undici')], { default: 'tide' }),
    /** Keep-alive connections per endpoint. */
    connectionsPerEndpoint: Type.Integer({ minimum: 1, maximum: 10000, default: 128 }),
    connectTimeout: Duration('5s'),
    /** Limits per cluster; past them requests fail fast with 503 instead of queueing. */
    circuitBreaker: Type.Object(
      {
        maxRequests: Type.Integer({ minimum: 1, default: 1024 }),
        maxPending: Type.Integer({ minimum: 0, default: 1024 }),
        maxRetries: Type.Integer({ minimum: 0, default: 3 }),
      },
      { ...Strict, default: {} },
    ),
    healthCheck: Type.Optional(
      Type.Object(
        {
          path: Type.String({ pattern: '^/', default: '/healthz' }),
          interval: Duration('5s'),
          timeout: Duration('1s'),
          unhealthyThreshold: Type.Integer({ minimum: 1, default: 2 }),
          healthyThreshold: Type.Integer({ minimum: 1, default: 1 }),
        },
        Strict,
      ),
    ),
    /** Passive: eject an endpoint after N consecutive 5xx or connect failures; back in after a growing pause. */
    outlierDetection: Type.Object(
      {
        consecutiveFailures: Type.Integer({ minimum: 0, default: 5 }),
        baseEjectionTime: Duration('30s'),
        maxEjectionTime: Duration('300s'),
        maxEjectionPercent: Type.Number({ minimum: 0, maximum: 100, default: 50 }),
      },
      { ...Strict, default: {} },
    ),
  },
  Strict,
);

export const ListenerSchema = Type.Object(
  {
    name: Name,
    address: Type.String({ default: '127.0.0.1' }),
    port: Type.Integer({ minimum: 0, maximum: 65535 }),
    /** TLS termination; several certificates are chosen by SNI (the first is the default). */
    tls: Type.Optional(
      Type.Object(
        {
          certificates: Type.Array(
            Type.Object(
              { cert: Type.String({ minLength: 1 }), key: Type.String({ minLength: 1 }), serverNames: Type.Optional(Type.Array(Type.String())) },
              Strict,
            ),
            {
              minItems: 1,
            },
          ),
        },
        Strict,
      ),
    ),
    /** Accept HTTP/2: h2c with prior knowledge on plain listeners, ALPN h2 on TLS ones. */
    http2: Type.Boolean({ default: true }),
    limits: Type.Object(
      {
        maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024, default: 16 * 1024 }),
        maxHeaders: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
        maxBodyBytes: Type.Integer({ minimum: 0, default: 10 * 1024 * 1024 }),
        headersTimeout: Duration('10s'),
        idleTimeout: Duration('60s'),
        bodyTimeout: Duration('30s'),
        maxConnections: Type.Integer({ minimum: 1, default: 10000 }),
      },
      { ...Strict, default: {} },
    ),
  },
  Strict,
);

const OverloadSchema = Type.Object(
  {
    maxHeapMb: Type.Integer({ minimum: 0, default: 0, description: 'shed while the JavaScript heap in use is over this, MiB; 0 = 90% of the heap limit' }),
    maxEventLoopDelay: DurationOrZero('0s'),
    maxConnections: Type.Integer({ minimum: 0, default: 0, description: 'open connections over all listeners; 0 = no limit beyond each listener' }),
    retryAfter: Duration('1s'),
  },
  { ...Strict, default: {} },
);

export const ProxyConfigSchema = Type.Object(
  {
    listeners: Type.Array(ListenerSchema, { minItems: 1 }),
    /** Serves /metrics, /ready and /config (the running config's version) on its own port. */
    admin: Type.Optional(Type.Object({ address: Type.String({ default: '127.0.0.1' }), port: Type.Integer({ minimum: 0, maximum: 65535 }) }, Strict)),
    virtualHosts: Type.Array(
      Type.Object(
        { name: Name, domains: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }), routes: Type.Array(RouteSchema, { minItems: 1 }) },
        Strict,
      ),
    ),
    clusters: Type.Array(ClusterSchema, { default: [] }),
    /** The process-wide overload policy: shed new requests with 503 and retry-after instead of falling over. */
    overload: OverloadSchema,
  },
  Strict,
);

export type ProxyConfig = Static<typeof ProxyConfigSchema>;
export type ListenerConfig = Static<typeof ListenerSchema>;
export type RouteConfig = Static<typeof RouteSchema>;
export type ClusterConfig = Static<typeof ClusterSchema>;
export type RetryConfig = Static<typeof RetrySchema>;

/**
 * The config of a data plane that is not built from a file (the gateway's and the egress's
 * own snapshots): no listeners, hosts or clusters, and the overload section's defaults.
 */
export const EMPTY_PROXY_CONFIG: ProxyConfig = Object.freeze({
  listeners: [],
  virtualHosts: [],
  clusters: [],
  overload: Value.Default(OverloadSchema, {}) as ProxyConfig['overload'],
}) as ProxyConfig;
