/**
 * The resources a person writes in YAML and applies with `tide apply -f`: one JSON Schema per
 * kind (TypeBox), `apiVersion: tide.dev/v1`, `kind`, `metadata`, `spec`. Function settings a
 * file leaves out take their defaults from where they are declared once (FUNCTION_DEFAULTS,
 * SCALING_DEFAULTS, PROBE_DEFAULTS); this file only says what may be written, in people's units
 * (`memory: 128Mi`, `timeout: 30s`, `cpu: 250m`).
 */
import { type Static, Type } from '@sinclair/typebox';
import { FaultSchema, HeaderEdits, POSITIVE_DURATION, RetrySchema, RouteMatchSchema } from './proxy.ts';

const Name = Type.String({ pattern: '^[a-z]([-a-z0-9]*[a-z0-9])?$', maxLength: 57, description: 'a DNS label: lowercase letters, digits and -' });
const Duration = Type.String({ pattern: '^\\d+(\\.\\d+)?(ms|s|m|h)$', description: 'like 500ms, 30s, 2m' });
/** For what must take some time (timeouts): at least 1ms. */
const PositiveDuration = Type.String({ pattern: POSITIVE_DURATION, description: 'a duration of at least 1ms like 500ms, 30s, 2m' });
const Quantity = Type.String({ pattern: '^\\d+(\\.\\d+)?(Ki|Mi|Gi|K|M|G|kb|mb|gb)?$', description: 'like 128Mi, 1Gi, 512kb' });
const Cpu = Type.Union([
  Type.String({ pattern: '^(\\d+m|\\d+(\\.\\d+)?)$', description: 'millicores like 250m, or cores like 0.5' }),
  Type.Number({ minimum: 0 }),
]);
const Labels = Type.Record(Type.String({ pattern: '^[A-Za-z0-9]([-A-Za-z0-9_./]{0,251}[A-Za-z0-9])?$' }), Type.String({ maxLength: 63 }));

export const MetadataSchema = Type.Object(
  {
    name: Name,
    namespace: Type.Optional(Type.Literal('default', { description: 'one namespace, "default", for now' })),
    labels: Type.Optional(Labels),
    annotations: Type.Optional(Type.Record(Type.String(), Type.String())),
  },
  { additionalProperties: false },
);

const KeyRef = Type.Object({ name: Name, key: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_.-]*$' }) }, { additionalProperties: false });

const EnvVar = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }),
    value: Type.Optional(Type.String()),
    valueFrom: Type.Optional(
      Type.Object(
        { secretKeyRef: Type.Optional(KeyRef), configKeyRef: Type.Optional(KeyRef) },
        { additionalProperties: false, minProperties: 1, maxProperties: 1 },
      ),
    ),
  },
  { additionalProperties: false },
);

const Probe = Type.Object(
  {
    path: Type.String({ pattern: '^/' }),
    initialDelaySeconds: Type.Optional(Type.Number({ minimum: 0 })),
    periodSeconds: Type.Optional(Type.Number({ minimum: 0.1 })),
    timeoutSeconds: Type.Optional(Type.Number({ minimum: 0.1 })),
    successThreshold: Type.Optional(Type.Integer({ minimum: 1 })),
    failureThreshold: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: false },
);

export const FunctionSpecSchema = Type.Object(
  {
    source: Type.Optional(Type.String({ description: 'the module to bundle, relative to this file' })),
    image: Type.Optional(
      Type.Object(
        {
          path: Type.String({ description: 'an OCI layout, tar or root filesystem on the node, relative to this file' }),
          command: Type.Optional(Type.Array(Type.String(), { minItems: 1 })),
          port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
        },
        { additionalProperties: false },
      ),
    ),
    sandbox: Type.Optional(Type.Union([Type.Literal('worker'), Type.Literal('container')])),
    env: Type.Optional(Type.Array(EnvVar)),
    resources: Type.Optional(
      Type.Object({ memory: Type.Optional(Quantity), cpu: Type.Optional(Cpu), cpuLimit: Type.Optional(Cpu) }, { additionalProperties: false }),
    ),
    timeout: Type.Optional(PositiveDuration),
    maxBody: Type.Optional(Quantity),
    scaling: Type.Optional(
      Type.Object(
        {
          minScale: Type.Optional(Type.Integer({ minimum: 0 })),
          maxScale: Type.Optional(Type.Integer({ minimum: 0 })),
          initialScale: Type.Optional(Type.Integer({ minimum: 0 })),
          metric: Type.Optional(Type.Union([Type.Literal('concurrency'), Type.Literal('rps')])),
          target: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
          targetUtilization: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
          containerConcurrency: Type.Optional(Type.Integer({ minimum: 0 })),
          stableWindow: Type.Optional(Duration),
          panicWindowPercentage: Type.Optional(Type.Number({ minimum: 1, maximum: 100 })),
          panicThreshold: Type.Optional(Type.Number()),
          maxScaleUpRate: Type.Optional(Type.Number()),
          maxScaleDownRate: Type.Optional(Type.Number()),
          scaleToZeroGracePeriod: Type.Optional(Duration),
          scaleDownDelay: Type.Optional(Duration),
          tick: Type.Optional(Duration),
          queueSize: Type.Optional(Type.Integer({ minimum: 0 })),
          queueTimeout: Type.Optional(Duration),
        },
        { additionalProperties: false },
      ),
    ),
    probes: Type.Optional(
      Type.Object({ startup: Type.Optional(Probe), readiness: Type.Optional(Probe), liveness: Type.Optional(Probe) }, { additionalProperties: false }),
    ),
    placement: Type.Optional(
      Type.Object(
        {
          nodeSelector: Type.Optional(Labels),
          tolerations: Type.Optional(
            Type.Array(
              Type.Object(
                {
                  key: Type.String(),
                  operator: Type.Optional(Type.Union([Type.Literal('Equal'), Type.Literal('Exists')])),
                  value: Type.Optional(Type.String()),
                },
                { additionalProperties: false },
              ),
            ),
          ),
          affinity: Type.Optional(Type.Array(Name)),
          antiAffinity: Type.Optional(Type.Array(Name)),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

const Data = Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_.-]*$' }), Type.String());

export const FunctionSchema = Type.Object(
  { apiVersion: Type.Literal('tide.dev/v1'), kind: Type.Literal('Function'), metadata: MetadataSchema, spec: FunctionSpecSchema },
  { additionalProperties: false, $id: 'https://tide.dev/schemas/v1/function.json', title: 'Tide Function' },
);

/** A kind that holds key/value data: Secret and Config differ only in name. */
function dataKind<K extends 'Secret' | 'Config'>(kind: K) {
  return Type.Object(
    {
      apiVersion: Type.Literal('tide.dev/v1'),
      kind: Type.Literal(kind),
      metadata: MetadataSchema,
      spec: Type.Object({ data: Data }, { additionalProperties: false }),
    },
    { additionalProperties: false, $id: `https://tide.dev/schemas/v1/${kind.toLowerCase()}.json`, title: `Tide ${kind}` },
  );
}

export const SecretSchema = dataKind('Secret');

export const ConfigSchema = dataKind('Config');

/** A token bucket: `per` names what gets a bucket of its own (the first value is the default). */
function rateLimitSchema<A extends string, B extends string>(per: [A, B], description: string) {
  return Type.Object(
    {
      requestsPerSecond: Type.Number({ exclusiveMinimum: 0 }),
      burst: Type.Optional(Type.Integer({ minimum: 1, description: 'default: requestsPerSecond, rounded up' })),
      per: Type.Optional(Type.Union([Type.Literal(per[0]), Type.Literal(per[1])], { description })),
    },
    { additionalProperties: false },
  );
}

const Backend = Type.Object(
  {
    revision: Type.Optional(Type.String({ pattern: '^[a-z]([-a-z0-9]*[a-z0-9])?-\\d{5}$', description: 'a revision, like hello-00003' })),
    function: Type.Optional(Type.String({ description: 'a function: its serving revision, whichever that is' })),
    weight: Type.Integer({ minimum: 0, maximum: 100, description: "percent of the rule's requests; the weights of a rule add up to 100" }),
  },
  { additionalProperties: false },
);

export const RouteSchema = Type.Object(
  {
    apiVersion: Type.Literal('tide.dev/v1'),
    kind: Type.Literal('Route'),
    metadata: MetadataSchema,
    spec: Type.Object(
      {
        hosts: Type.Optional(
          Type.Array(Type.String({ pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:\\d+)?$' }), { minItems: 1, description: 'default: NAME.<domain>' }),
        ),
        rules: Type.Array(
          Type.Object(
            {
              match: Type.Optional(RouteMatchSchema),
              split: Type.Array(Backend, { minItems: 1 }),
              timeout: Type.Optional(PositiveDuration),
              retries: Type.Optional(RetrySchema),
              mirror: Type.Optional(
                Type.Object(
                  {
                    revision: Type.Optional(Type.String({ pattern: '^[a-z]([-a-z0-9]*[a-z0-9])?-\\d{5}$' })),
                    function: Type.Optional(Type.String()),
                    percent: Type.Number({ exclusiveMinimum: 0, maximum: 100 }),
                  },
                  { additionalProperties: false, description: 'a copy of this share of requests also goes to the shadow; its answers are dropped' },
                ),
              ),
              fault: Type.Optional(FaultSchema),
              rateLimit: Type.Optional(
                rateLimitSchema(['route', 'client'], 'one bucket for the rule (default), or one per client address; above it 429 with retry-after'),
              ),
              requestHeaders: Type.Optional(HeaderEdits),
              responseHeaders: Type.Optional(HeaderEdits),
            },
            { additionalProperties: false },
          ),
          { minItems: 1, description: 'tried in order; the first that matches takes the request' },
        ),
        tags: Type.Optional(
          Type.Record(Type.String({ pattern: '^[a-z]([-a-z0-9]*[a-z0-9])?$' }), Type.String({ pattern: '^[a-z]([-a-z0-9]*[a-z0-9])?-\\d{5}$' }), {
            description: 'TAG: revision; TAG.<host> reaches that revision alone',
          }),
        ),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false, $id: 'https://tide.dev/schemas/v1/route.json', title: 'Tide Route' },
);

export const RolloutSchema = Type.Object(
  {
    apiVersion: Type.Literal('tide.dev/v1'),
    kind: Type.Literal('Rollout'),
    metadata: MetadataSchema,
    spec: Type.Object(
      {
        function: Type.Optional(Name),
        steps: Type.Array(
          Type.Object(
            { weight: Type.Integer({ minimum: 1, maximum: 99, description: "the new revision's share during this step, percent" }), pause: Duration },
            { additionalProperties: false },
          ),
          { minItems: 1, description: 'after the last step the new revision takes 100%' },
        ),
        analysis: Type.Optional(
          Type.Object(
            {
              maxErrorRate: Type.Optional(
                Type.Number({ minimum: 0, maximum: 1, description: 'share of 5xx answers above which the new revision is rolled back' }),
              ),
              maxP99: Type.Optional(Duration),
              minRequests: Type.Optional(Type.Integer({ minimum: 1, description: 'fewer requests in a step: the step is not judged' })),
            },
            { additionalProperties: false },
          ),
        ),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false, $id: 'https://tide.dev/schemas/v1/rollout.json', title: 'Tide Rollout' },
);

const PathMatch = Type.Object(
  {
    exact: Type.Optional(Type.String({ pattern: '^/' })),
    prefix: Type.Optional(Type.String({ pattern: '^/' })),
    regex: Type.Optional(Type.String({ description: 'anchored at both ends' })),
  },
  { additionalProperties: false, minProperties: 1, maxProperties: 1 },
);

const PolicyRule = Type.Object(
  {
    action: Type.Optional(Type.Union([Type.Literal('ALLOW'), Type.Literal('DENY')], { description: 'default ALLOW; DENY rules are checked first and win' })),
    from: Type.Optional(
      Type.Array(
        Type.Object(
          {
            principals: Type.Optional(
              Type.Array(Type.String({ pattern: '^(\\*|spiffe://[^\\s]+)$' }), {
                minItems: 1,
                description: 'SPIFFE IDs; a trailing * matches a prefix, "*" any authenticated caller',
              }),
            ),
            namespaces: Type.Optional(Type.Array(Name, { minItems: 1, description: "the caller's namespace (tide-system for the gateway)" })),
            functions: Type.Optional(Type.Array(Name, { minItems: 1, description: 'calling functions of this namespace, by name' })),
          },
          { additionalProperties: false, description: 'every field given must match' },
        ),
        { minItems: 1, description: 'any entry may match; omitted: any caller, authenticated or not' },
      ),
    ),
    to: Type.Optional(
      Type.Array(
        Type.Object(
          {
            methods: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Z]+$' }), { minItems: 1 })),
            paths: Type.Optional(Type.Array(PathMatch, { minItems: 1 })),
          },
          { additionalProperties: false, description: 'every field given must match' },
        ),
        { minItems: 1, description: 'any entry may match; omitted: any request' },
      ),
    ),
  },
  { additionalProperties: false },
);

export const PolicySchema = Type.Object(
  {
    apiVersion: Type.Literal('tide.dev/v1'),
    kind: Type.Literal('Policy'),
    metadata: MetadataSchema,
    spec: Type.Object(
      {
        selector: Type.Optional(
          Type.Object(
            { functions: Type.Array(Name, { minItems: 1 }) },
            { additionalProperties: false, description: 'the functions this policy is about; omitted: every function of the namespace' },
          ),
        ),
        mtls: Type.Optional(
          Type.Object(
            {
              mode: Type.Union([Type.Literal('STRICT'), Type.Literal('PERMISSIVE'), Type.Literal('DISABLE')], {
                description: 'STRICT (the default): mesh calls must use mutual TLS; PERMISSIVE: plaintext is accepted too; DISABLE: callers use plaintext',
              }),
            },
            { additionalProperties: false },
          ),
        ),
        rules: Type.Optional(
          Type.Array(PolicyRule, {
            description: 'given (even empty): a selected function refuses every request no ALLOW rule matches',
          }),
        ),
        rateLimit: Type.Optional(rateLimitSchema(['function', 'source'], 'one bucket per selected function (default), or per function and caller')),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false, $id: 'https://tide.dev/schemas/v1/policy.json', title: 'Tide Policy' },
);

/** Every kind `tide apply` takes, by name. */
export const KIND_SCHEMAS = {
  Function: FunctionSchema,
  Secret: SecretSchema,
  Config: ConfigSchema,
  Route: RouteSchema,
  Rollout: RolloutSchema,
  Policy: PolicySchema,
} as const;
export type Kind = keyof typeof KIND_SCHEMAS;

export type FunctionResource = Static<typeof FunctionSchema>;
export type SecretResource = Static<typeof SecretSchema>;
export type ConfigResource = Static<typeof ConfigSchema>;
export type RouteResource = Static<typeof RouteSchema>;
export type RouteSpec = RouteResource['spec'];
export type RolloutResource = Static<typeof RolloutSchema>;
export type RolloutSpec = RolloutResource['spec'];
export type PolicyResource = Static<typeof PolicySchema>;
export type PolicySpec = PolicyResource['spec'];
export type Resource = FunctionResource | SecretResource | ConfigResource | RouteResource | RolloutResource | PolicyResource;

/** The envelope every document is checked against first, so a wrong kind is one clear message. */
export const EnvelopeSchema = Type.Object(
  {
    apiVersion: Type.Literal('tide.dev/v1'),
    kind: Type.Union(Object.keys(KIND_SCHEMAS).map((k) => Type.Literal(k))),
    metadata: Type.Object({ name: Type.String() }),
    spec: Type.Object({}),
  },
  { additionalProperties: true },
);
