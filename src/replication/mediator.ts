/**
 * The mediator: etcd decides which array of a pod goes on alone when the two lose each other.
 *
 * It is consulted only on failure. Two keys per pod, under `/pstorage/pods/POD/`:
 *   owner     the array that won the last race, attached to an etcd lease with a TTL
 *             (LEASE_TTL_SECONDS) that the winner keeps alive while it serves alone;
 *   survivor  the same array id, with no lease: "this array holds the only up-to-date copy".
 * `acquire` is one etcd transaction (compare-and-swap): it succeeds when no owner key exists and
 * the survivor key is absent or names this array; it then writes both. So exactly one array wins,
 * and an array left behind can never win later, even after the winner's lease ran out (the
 * winner died too): the survivor key stays until `release`, which the survivor calls once the
 * other array is back in sync. etcd's own Raft makes the keys durable and linearizable.
 *
 * Every call is bounded (MEDIATOR_TIMEOUT_MS): an unreachable etcd is an answer ("unreachable"),
 * not a hang, so a pod can suspend rather than wait.
 */
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from '../common/log.js';

export const LEASE_TTL_SECONDS = 10;
export const MEDIATOR_TIMEOUT_MS = 2000;

export type AcquireResult = 'won' | 'lost' | 'unreachable';

let etcdModule: Promise<typeof import('etcd3')> | null = null;

/**
 * The etcd client (gRPC and protobuf, about 0.2 s of CPU to load) is loaded only by an array that
 * has pods, in the background when the pod starts, so that neither the CLI nor an array without
 * pods pays for it, and a failover does not wait for it.
 */
export function loadEtcd(): Promise<typeof import('etcd3')> {
  etcdModule ??= import('etcd3');
  return etcdModule;
}

function withTimeout<T>(work: Promise<T>, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the mediator did not answer within ${timeoutMs} ms`)), timeoutMs);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

export class Mediator {
  private client: Etcd3 | null = null;
  private lease: Lease | null = null;

  constructor(
    readonly url: string,
    private readonly pod: string,
    private readonly arrayId: string,
    private readonly logger: Logger,
  ) {
    void loadEtcd().catch((error: unknown) => logger.error('the etcd client did not load', { error: (error as Error).message }));
  }

  private get ownerKey(): string {
    return `/pstorage/pods/${this.pod}/owner`;
  }
  private get survivorKey(): string {
    return `/pstorage/pods/${this.pod}/survivor`;
  }

  private async connect(): Promise<Etcd3> {
    // Every call is also bounded by withTimeout: the client's own retries cannot turn
    // "etcd is down" into a long wait.
    const { Etcd3 } = await loadEtcd();
    this.client ??= new Etcd3({ hosts: this.url, dialTimeout: MEDIATOR_TIMEOUT_MS });
    return this.client;
  }

  /** One compare-and-swap race for the pod; see the note at the top. */
  async acquire(): Promise<AcquireResult> {
    try {
      return await withTimeout(this.race(), MEDIATOR_TIMEOUT_MS);
    } catch (error) {
      this.logger.warn('mediator unreachable', { url: this.url, error: (error as Error).message });
      this.drop();
      return 'unreachable';
    }
  }

  private async race(): Promise<AcquireResult> {
    const client = await this.connect();
    if (this.lease === null) {
      const lease = client.lease(LEASE_TTL_SECONDS);
      lease.on('lost', (error) => this.logger.warn('mediator lease lost', { error: error.message }));
      await lease.grant();
      this.lease = lease;
    }
    const leaseId = await this.lease.grant();
    const result = await client
      .if(this.ownerKey, 'Create', '==', 0)
      .and(this.survivorKey, 'Create', '==', 0)
      .then(client.put(this.ownerKey).value(this.arrayId).lease(leaseId), client.put(this.survivorKey).value(this.arrayId))
      .else(client.get(this.ownerKey), client.get(this.survivorKey))
      .commit();
    if (result.succeeded) return 'won';
    // Lost the first race: the keys may still be ours (we won before and restarted the race).
    const owner = result.responses[0]?.response_range?.kvs?.[0]?.value?.toString();
    const survivor = result.responses[1]?.response_range?.kvs?.[0]?.value?.toString();
    if (survivor === this.arrayId && (owner === undefined || owner === this.arrayId)) {
      await client.put(this.ownerKey).value(this.arrayId).lease(leaseId);
      return 'won';
    }
    return 'lost';
  }

  /** The pod is in sync again: nobody is the survivor any more. Best effort, bounded. */
  async release(): Promise<boolean> {
    try {
      await withTimeout(
        (async () => {
          const client = await this.connect();
          await client.if(this.survivorKey, 'Value', '==', this.arrayId).then(client.delete().key(this.survivorKey), client.delete().key(this.ownerKey)).commit();
        })(),
        MEDIATOR_TIMEOUT_MS,
      );
      await this.lease?.revoke().catch(() => undefined);
      this.lease = null;
      return true;
    } catch (error) {
      this.logger.warn('mediator release failed; the survivor key stays until the next resync', { error: (error as Error).message });
      return false;
    }
  }

  private drop(): void {
    const lease = this.lease;
    this.lease = null;
    if (lease !== null) void lease.revoke().catch(() => undefined);
    this.client?.close();
    this.client = null;
  }

  close(): void {
    this.lease?.release();
    this.lease = null;
    this.client?.close();
    this.client = null;
  }
}
