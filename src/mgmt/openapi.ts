/**
 * The OpenAPI 3 description of the management API, written by hand and served at
 * `GET /api/v1/openapi.json`. Every route of api-server.ts's ROUTES has an operation here
 * (test/cli/api.test.ts checks it both ways).
 */

const json = (schema: unknown) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const ok = (description: string, schema: unknown) => ({ description, content: json(schema) });
const errors = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((status) => [String(status), { $ref: `#/components/responses/Error${status}` }]));
const pathParam = (name: string, description: string) => ({ name, in: 'path', required: true, description, schema: { type: 'string' } });
const VOLUME = pathParam('name', 'volume name');
const VOLUME_OR_SNAPSHOT = pathParam('name', 'volume name, or VOLUME@SNAPSHOT (reads only)');
const SNAPSHOT = pathParam('snapshot', 'snapshot name');
const SIZE = { oneOf: [{ type: 'integer', minimum: 512 }, { type: 'string', example: '10G' }], description: 'bytes, or a size with a K/M/G/T suffix (binary); a multiple of 512 bytes' };

const ERROR_TEXT: Record<number, string> = {
  400: 'invalid argument (bad name, size or range)',
  401: 'TCP listener only: missing or wrong bearer token',
  403: 'the target is a read-only snapshot',
  404: 'no such volume, snapshot or route',
  409: 'already exists, or busy (clones or snapshots depend on it)',
  507: 'the array is full',
};

export const OPENAPI_DOCUMENT = {
  openapi: '3.0.3',
  info: {
    title: 'pstorage management API',
    version: '1',
    description:
      'Volumes, snapshots, clones, changed-block diffs, metrics and audit of a pstorage array. Served on the Unix socket ' +
      'DATA_DIR/pstorage.sock (mode 0600, no token) and, with `pstorage serve --api-listen`, on loopback TCP, where every ' +
      'request needs `Authorization: Bearer TOKEN`. Errors are `{"error": {"code", "message"}}`.',
  },
  servers: [{ url: 'http://localhost' }],
  security: [{}, { bearer: [] }],
  paths: {
    '/api/v1/openapi.json': { get: { summary: 'This document', responses: { '200': ok('OpenAPI 3 document', { type: 'object' }) } } },
    '/api/v1/volumes': {
      get: { summary: 'List volumes', responses: { '200': ok('volumes, by name', { type: 'array', items: ref('Volume') }) } },
      post: {
        summary: 'Create a thin volume',
        requestBody: { required: true, content: json({ type: 'object', required: ['name', 'size'], properties: { name: { type: 'string' }, size: SIZE } }) },
        responses: { '201': ok('the new volume', ref('Volume')), ...errors(400, 409) },
      },
    },
    '/api/v1/volumes/{name}': {
      parameters: [VOLUME],
      get: { summary: 'One volume', responses: { '200': ok('the volume', ref('Volume')), ...errors(404) } },
      patch: {
        summary: 'Resize a volume (shrinking needs force: it discards data past the new end)',
        requestBody: { required: true, content: json({ type: 'object', required: ['size'], properties: { size: SIZE, force: { type: 'boolean', default: false } } }) },
        responses: { '200': ok('the resized volume, with previousSizeBytes', ref('Volume')), ...errors(400, 404) },
      },
      delete: {
        summary: 'Delete a volume (with force=true, its snapshots too); frees the chunks no one else references',
        parameters: [{ name: 'force', in: 'query', schema: { type: 'boolean', default: false } }],
        responses: { '200': ok('what was deleted', { type: 'object', properties: { deleted: { type: 'string' }, snapshotsDeleted: { type: 'array', items: { type: 'string' } } } }), ...errors(404, 409) },
      },
    },
    '/api/v1/volumes/{name}/access': {
      parameters: [VOLUME],
      put: {
        summary: 'Set the NBD access list: only TLS clients with these identities (client certificate common name, or PSK username) see the volume and its snapshots; everyone else, plain clients included, is told it does not exist',
        requestBody: { required: true, content: json({ type: 'object', required: ['identities'], properties: { identities: { type: 'array', minItems: 1, items: { type: 'string' }, example: ['alice', 'bob'] } } }) },
        responses: { '200': ok('the volume, with its accessList', ref('Volume')), ...errors(400, 404) },
      },
      delete: { summary: 'Clear the access list: every client may attach the volume again', responses: { '200': ok('the volume, accessList null', ref('Volume')), ...errors(404) } },
    },
    '/api/v1/volumes/{name}/snapshots': {
      parameters: [VOLUME],
      get: { summary: "A volume's snapshots, oldest first", responses: { '200': ok('snapshots', { type: 'array', items: ref('SnapshotInfo') }), ...errors(404) } },
      post: {
        summary: 'Take a snapshot (O(1))',
        requestBody: { required: true, content: json({ type: 'object', required: ['name'], properties: { name: { type: 'string' } } }) },
        responses: { '201': ok('the snapshot', ref('Snapshot')), ...errors(400, 404, 409) },
      },
    },
    '/api/v1/volumes/{name}/snapshots/{snapshot}': {
      parameters: [VOLUME, SNAPSHOT],
      delete: { summary: 'Delete a snapshot (refused while clones depend on it)', responses: { '200': ok('deleted', { type: 'object', properties: { deleted: { type: 'string' } } }), ...errors(404, 409) } },
    },
    '/api/v1/volumes/{name}/snapshots/{snapshot}/restore': {
      parameters: [VOLUME, SNAPSHOT],
      post: { summary: "Roll the volume back to the snapshot (the volume's later writes are discarded)", responses: { '200': ok('the volume, with restoredFrom', ref('Volume')), ...errors(404) } },
    },
    '/api/v1/volumes/{name}/replicate': {
      parameters: [VOLUME],
      post: {
        summary: 'Asynchronous replication, one run: snapshot the volume and send what changed since the last snapshot the target holds (the target keeps it as a snapshot of the same name)',
        requestBody: { required: true, content: json({ type: 'object', required: ['to'], properties: { to: { type: 'string', example: '127.0.0.1:7002' } } }) },
        responses: { '200': ok('the run', { type: 'object', properties: { snapshot: { type: 'string' }, base: { type: 'string', nullable: true }, changedBytes: { type: 'integer' }, sentBytes: { type: 'integer' }, durationMs: { type: 'integer' } } }), ...errors(400, 404) },
      },
    },
    '/api/v1/pods': {
      get: { summary: 'ActiveCluster pods of this array, with their states', responses: { '200': ok('pods', { type: 'array', items: ref('Pod') }) } },
      post: {
        summary: 'Create a pod with a peer array (both run pstorage serve --replication-listen with the same --replication-secret-file)',
        requestBody: { required: true, content: json({ type: 'object', required: ['name', 'peer', 'mediator'], properties: { name: { type: 'string' }, peer: { type: 'string', example: '127.0.0.1:7001' }, mediator: { type: 'string', example: 'http://127.0.0.1:2379' } } }) },
        responses: { '201': ok('the new pod', ref('Pod')), ...errors(400, 409) },
      },
    },
    '/api/v1/pods/{name}': {
      parameters: [pathParam('name', 'pod name')],
      get: { summary: 'One pod: state (in-sync, resyncing, degraded, suspended), link, role, changed bytes', responses: { '200': ok('the pod', ref('Pod')), ...errors(404) } },
      delete: { summary: 'Delete a pod on both arrays; its volumes stay as ordinary volumes', responses: { '200': ok('what was deleted', { type: 'object' }), ...errors(404) } },
    },
    '/api/v1/pods/{name}/volumes': {
      parameters: [pathParam('name', 'pod name')],
      post: {
        summary: 'Create a volume in the pod, on both arrays',
        requestBody: { required: true, content: json({ type: 'object', required: ['name', 'size'], properties: { name: { type: 'string' }, size: SIZE } }) },
        responses: { '201': ok('the new volume', { type: 'object', properties: { name: { type: 'string' }, sizeBytes: { type: 'integer' }, pod: { type: 'string' } } }), ...errors(400, 404, 409) },
      },
    },
    '/api/v1/snapshots': {
      get: { summary: 'Every snapshot of every volume', responses: { '200': ok('snapshots', { type: 'array', items: ref('SnapshotInfo') }) } },
    },
    '/api/v1/clones': {
      post: {
        summary: 'Clone a snapshot into a new writable volume (O(1))',
        requestBody: { required: true, content: json({ type: 'object', required: ['source', 'name'], properties: { source: { type: 'string', example: 'db@monday' }, name: { type: 'string' } } }) },
        responses: { '201': ok('the clone', ref('Volume')), ...errors(400, 404, 409) },
      },
    },
    '/api/v1/diff': {
      get: {
        summary: 'Byte ranges written between two snapshots of one volume (or a snapshot and the volume now)',
        parameters: [
          { name: 'from', in: 'query', required: true, schema: { type: 'string', example: 'db@monday' } },
          { name: 'to', in: 'query', required: true, schema: { type: 'string', example: 'db@tuesday' }, description: 'VOLUME@SNAPSHOT, or VOLUME' },
        ],
        responses: { '200': ok('changed ranges', ref('Diff')), ...errors(400, 404) },
      },
    },
    '/api/v1/metrics': { get: { summary: 'Array counters (the `pstorage stats` document)', responses: { '200': ok('stats', { type: 'object' }) } } },
    '/api/v1/metrics/reduction': { get: { summary: 'Data-reduction counters (patterns, dedup, compression, thin provisioning)', responses: { '200': ok('reduction', { type: 'object' }) } } },
    '/api/v1/metrics/flash': { get: { summary: 'Flash counters (erase blocks, P/E, GC, failures)', responses: { '200': ok('flash', { type: 'object' }) } } },
    '/api/v1/analytics': {
      get: {
        summary: 'Capacity analytics: fill rate and days until full from least-squares fits over 7, 30 and 90 days (with each fit\'s sample count and span), a health score (0-100) from wear, retired erase blocks and free space, and per-volume shares of mapped blocks not written for 1, 7 and 30 days',
        parameters: [{ name: 'history', in: 'query', schema: { type: 'boolean', default: false }, description: 'also return the samples: [time ms, used bytes, logical bytes, capacity bytes], oldest first' }],
        responses: { '200': ok('the `pstorage analytics --json` document', ref('Analytics')) },
      },
    },
    '/api/v1/flash/erase-blocks': {
      get: {
        summary: 'Per-erase-block P/E (erase) counts and the retired blocks, for a wear heat map',
        responses: { '200': ok('erase counts by erase block', { type: 'object', properties: { eraseBlocks: { type: 'integer' }, enduranceCycles: { type: 'integer' }, eraseCounts: { type: 'array', items: { type: 'integer' } }, retired: { type: 'array', items: { type: 'integer' }, description: 'indexes of retired (or retiring) erase blocks' } } }) },
      },
    },
    '/dashboard/': {
      get: { summary: 'The web dashboard (HTML; no token needed for the page itself, it asks for the token and uses it for every data route)', security: [], responses: { '200': { description: 'HTML page', content: { 'text/html': { schema: { type: 'string' } } } } } },
    },
    '/dashboard/{asset}': {
      parameters: [pathParam('asset', 'dashboard.js, dashboard.css, uPlot.iife.min.js or uPlot.min.css')],
      get: { summary: "The dashboard's static scripts and styles (no token needed)", security: [], responses: { '200': { description: 'the asset', content: { 'text/javascript': { schema: { type: 'string' } }, 'text/css': { schema: { type: 'string' } } } }, ...errors(404) } },
    },
    '/metrics': {
      get: {
        summary: 'Prometheus metrics (text format 0.0.4): per-volume NBD requests, bytes, errors, latency histograms, connections; capacity, data reduction, flash wear, GC',
        responses: { '200': { description: 'Prometheus text exposition', content: { 'text/plain; version=0.0.4': { schema: { type: 'string' } } } } },
      },
    },
    '/api/v1/audit': {
      post: { summary: 'Check metadata against the NAND image (commits first; changes nothing)', responses: { '200': ok('audit report; ok is false on any problem', ref('AuditReport')) } },
    },
    '/api/v1/volumes/{name}/data': {
      parameters: [VOLUME_OR_SNAPSHOT],
      get: {
        summary: 'The raw content of a volume or VOLUME@SNAPSHOT (holes read as zero bytes)',
        responses: { '200': { description: 'sizeBytes bytes', content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } }, ...errors(404) },
      },
      put: {
        summary: 'Write the raw body into the volume from offset 0, then flush (bounded buffering; zero blocks are unmapped)',
        requestBody: { required: true, content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } },
        responses: { '200': ok('bytes written', { type: 'object', properties: { volume: { type: 'string' }, writtenBytes: { type: 'integer' }, durationMs: { type: 'integer' } } }), ...errors(400, 403, 404, 507) },
      },
    },
  },
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'required on the TCP listener only' } },
    responses: Object.fromEntries(Object.entries(ERROR_TEXT).map(([status, description]) => [`Error${status}`, { description, content: json(ref('Error')) }])),
    schemas: {
      Pod: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          state: { type: 'string', enum: ['in-sync', 'resyncing', 'degraded', 'suspended'] },
          reason: { type: 'string' },
          role: { type: 'string', enum: ['leader', 'follower'] },
          link: { type: 'string', enum: ['up', 'down'] },
          peer: { type: 'string' },
          mediator: { type: 'string' },
          volumes: { type: 'array', items: { type: 'string' } },
          changedChunks: { type: 'integer' },
          changedBytes: { type: 'integer' },
          lastResyncMs: { type: 'integer', nullable: true },
          linkDataBytesSent: { type: 'integer' },
        },
      },
      Analytics: {
        type: 'object',
        properties: {
          generatedAt: { type: 'string', format: 'date-time' },
          trackingSince: { type: 'string', format: 'date-time' },
          sampleIntervalMs: { type: 'integer', description: 'sampling interval: 300000 unless the server runs with PSTORAGE_ANALYTICS_INTERVAL_MS' },
          samples: { type: 'object', properties: { tier5m: { type: 'integer', description: 'samples at the sampling interval (every 5 minutes by default)' }, tier1h: { type: 'integer' }, tier1d: { type: 'integer' } } },
          current: { type: 'object', nullable: true },
          forecasts: {
            type: 'array',
            items: {
              type: 'object',
              properties: {
                windowDays: { type: 'integer' },
                samples: { type: 'integer' },
                spanDays: { type: 'number' },
                usedBytesPerDay: { type: 'number', nullable: true },
                logicalBytesPerDay: { type: 'number', nullable: true },
                daysUntilFull: { type: 'number', nullable: true },
                fullAt: { type: 'string', format: 'date-time', nullable: true },
              },
            },
          },
          health: { type: 'object', properties: { score: { type: 'number' }, limitedBy: { type: 'string', enum: ['wear', 'retired', 'free'] }, wearScore: { type: 'number' }, retiredScore: { type: 'number' }, freeScore: { type: 'number' } } },
          volumes: {
            type: 'array',
            items: { type: 'object', properties: { name: { type: 'string' }, mappedBlocks: { type: 'integer' }, untrackedBlocks: { type: 'integer' }, notWrittenFor: { type: 'object', properties: { '1d': { type: 'number', nullable: true }, '7d': { type: 'number', nullable: true }, '30d': { type: 'number', nullable: true } } } } },
          },
        },
      },
      Error: {
        type: 'object',
        required: ['error'],
        properties: { error: { type: 'object', required: ['code', 'message'], properties: { code: { type: 'string', example: 'NOT_FOUND' }, message: { type: 'string' } } } },
      },
      Volume: {
        type: 'object',
        properties: {
          id: { type: 'integer' },
          name: { type: 'string' },
          sizeBytes: { type: 'integer' },
          logicalBytes: { type: 'integer', description: 'mapped logical blocks × 4096' },
          mappedBlocks: { type: 'integer' },
          patternBlocks: { type: 'integer' },
          hostBytesWritten: { type: 'integer' },
          dedupHits: { type: 'integer' },
          createdAt: { type: 'string', format: 'date-time' },
          origin: { type: 'string', nullable: true, description: 'VOLUME@SNAPSHOT a clone was made from' },
          snapshots: { type: 'array', items: { type: 'string' } },
          accessList: { type: 'array', items: { type: 'string' }, nullable: true, description: 'identities allowed to attach it over NBD (TLS only); null: every client' },
        },
      },
      Snapshot: {
        type: 'object',
        properties: { volume: { type: 'string' }, name: { type: 'string' }, createdAt: { type: 'string', format: 'date-time' }, sizeBytes: { type: 'integer' }, mappedBlocks: { type: 'integer' }, logicalBytes: { type: 'integer' } },
      },
      SnapshotInfo: {
        type: 'object',
        properties: {
          id: { type: 'integer' },
          volume: { type: 'string' },
          name: { type: 'string' },
          createdAt: { type: 'string', format: 'date-time' },
          sizeBytes: { type: 'integer' },
          mappedBlocks: { type: 'integer' },
          patternBlocks: { type: 'integer' },
          exclusiveBytes: { type: 'integer', description: 'NAND bytes deleting this snapshot would free' },
        },
      },
      Diff: {
        type: 'object',
        properties: {
          from: { type: 'string' },
          to: { type: 'string' },
          ranges: { type: 'array', items: { type: 'object', properties: { offsetBytes: { type: 'integer' }, lengthBytes: { type: 'integer' } } } },
          rangeCount: { type: 'integer' },
          totalBytes: { type: 'integer' },
        },
      },
      AuditReport: {
        type: 'object',
        properties: { ok: { type: 'boolean' }, problems: { type: 'array', items: { type: 'string' } }, volumes: { type: 'integer' }, mappedBlocks: { type: 'integer' }, liveChunks: { type: 'integer' }, checkedRecords: { type: 'integer' }, eraseBlocks: { type: 'integer' }, durationMs: { type: 'integer' } },
      },
    },
  },
} as const;
