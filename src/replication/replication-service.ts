/**
 * The replication side of one array: its link listener, its pods, and the export catalog that
 * hands pod volumes to NBD connections as pod devices (pod.ts) and every other volume unchanged.
 *
 * The NBD server looks an export up once per connection (the handshake), so a volume outside any
 * pod costs nothing per request: its connections get the local volume itself. The service reaches
 * the array only through `PodArray` (lookup, create, delete), so the replication layer depends on
 * the BlockDevice seam and not on the volume layer's classes.
 *
 * Link set-up: the array where `pod create` ran dials the peer's listener (`--replication-listen`),
 * both prove they know the shared secret (peer-link.ts), and the first frame says what the
 * connection is for: `pod-create` (make the pod on the accepting array) or `attach` (an existing
 * pod's link, after a failure or a restart). Everything after that is the pod's.
 */
import net from 'node:net';
import type { BlockDevice, ExportCatalog, ExportEntry } from '../common/block-device.js';
import { StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { parseSizeBytes } from '../common/size.js';
import type { LinkMessage } from './link-protocol.js';
import { loadReplicationRecord, saveReplicationRecord, type ReplicationRecord } from './pod-store.js';
import { Pod, type PodConfig, type PodHost } from './pod.js';
import { ChangesReceiver, sendChanges, type ReplicateResult, type SnapshotArray } from './async-replication.js';
import { PeerLink, type TcpPeerAddress } from './peer-link.js';

/** What the service needs from the array. */
export interface PodArray extends ExportCatalog, SnapshotArray {
  createVolume(name: string, sizeBytes: number): Promise<unknown>;
  deleteVolume(name: string): Promise<unknown>;
}

export interface ReplicationOptions {
  dataDir: string;
  /** The link listener; null: this array can neither create nor join pods. */
  listen: TcpPeerAddress | null;
  /** The shared link secret (>= 16 bytes); required with `listen`. */
  secret: Buffer | null;
}

/** The management API's view (mgmt/api-server.ts routes). */
export interface ReplicationApi {
  listPods(): Array<Record<string, unknown>>;
  podStatus(name: string): Record<string, unknown>;
  createPod(body: unknown): Promise<Record<string, unknown>>;
  deletePod(name: string): Promise<Record<string, unknown>>;
  createPodVolume(pod: string, body: unknown): Promise<{ name: string; sizeBytes: number; pod: string }>;
  /** The pod a volume belongs to, or null. */
  podOf(volume: string): string | null;
  /** One asynchronous replication run of a volume to another array (async-replication.ts). */
  replicate(volume: string, body: unknown): Promise<ReplicateResult>;
}

const POD_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

function parsePeer(text: unknown): TcpPeerAddress {
  const match = typeof text === 'string' ? /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text) : null;
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || port < 1 || port > 65535) throw StorageError.invalidArgument(`peer "${String(text)}" is not HOST:PORT: give the peer array's --replication-listen address, e.g. 127.0.0.1:7001`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

function parseMediator(text: unknown): string {
  if (typeof text !== 'string' || !/^https?:\/\/[^/\s]+\/?$/.test(text)) throw StorageError.invalidArgument(`mediator "${String(text)}" is not an etcd URL: give e.g. http://127.0.0.1:2379`);
  return text.replace(/\/$/, '');
}

export class ReplicationService implements ExportCatalog, PodHost, ReplicationApi {
  readonly arrayId: string;
  private readonly pods = new Map<string, Pod>();
  private server: net.Server | null = null;
  private boundAddress: TcpPeerAddress | null = null;
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly array: PodArray,
    readonly logger: Logger,
    private readonly options: ReplicationOptions,
    private readonly record: ReplicationRecord,
  ) {
    this.arrayId = record.arrayId;
  }

  static async open(array: PodArray, logger: Logger, options: ReplicationOptions): Promise<ReplicationService> {
    if (options.listen !== null && (options.secret === null || options.secret.length < 16)) {
      throw StorageError.invalidArgument('--replication-listen needs a shared secret of at least 16 bytes: pass --replication-secret-file FILE (the same file on both arrays, e.g. "openssl rand -out FILE 32")');
    }
    const record = loadReplicationRecord(options.dataDir);
    const service = new ReplicationService(array, logger, options, record);
    if (options.listen !== null) await service.listen(options.listen);
    // Every pod is registered before any starts: a start saves the record, which lists the map.
    for (const config of record.pods) service.pods.set(config.name, new Pod(config, service));
    for (const pod of service.pods.values()) pod.start(false);
    return service;
  }

  /** The bound listener ("host:port"), for logs and for the peer to dial back. */
  get listenAddress(): TcpPeerAddress | null {
    return this.boundAddress;
  }

  private async listen(address: TcpPeerAddress): Promise<void> {
    const server = net.createServer((socket) => this.accepted(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(address.port, address.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const bound = server.address() as net.AddressInfo;
    this.boundAddress = { host: address.host, port: bound.port };
    this.server = server;
  }

  // ---- Export catalog -------------------------------------------------------------------------

  list(): ReturnType<ExportCatalog['list']> {
    return this.array.list();
  }

  lookup(name: string): ExportEntry | undefined {
    const entry = this.array.lookup(name);
    if (entry === undefined || this.pods.size === 0) return entry;
    for (const pod of this.pods.values()) {
      if (pod.hasVolume(entry.name)) return { ...entry, device: pod.deviceFor(entry.name, entry.device) };
    }
    return entry;
  }

  // ---- PodHost --------------------------------------------------------------------------------

  localDevice(volume: string): BlockDevice | undefined {
    if (volume === '' || volume.includes('@')) return undefined;
    return this.array.lookup(volume)?.device;
  }

  save(): void {
    this.record.pods = [...this.pods.values()].map((pod) => pod.config);
    saveReplicationRecord(this.options.dataDir, this.record);
  }

  private requireSecret(): Buffer {
    if (this.options.secret === null || this.boundAddress === null) {
      throw StorageError.notSupported('this array has no replication listener: restart it with --replication-listen HOST:PORT --replication-secret-file FILE');
    }
    return this.options.secret;
  }

  async dial(pod: Pod): Promise<PeerLink> {
    const link = await PeerLink.dial(pod.config.peer, this.requireSecret(), this.arrayId);
    try {
      await link.ask({ type: 'attach', pod: pod.name });
    } catch (error) {
      link.close('attach refused');
      throw error;
    }
    return link;
  }

  private accepted(socket: net.Socket): void {
    // Tracked so that close() ends them: server.close() waits for every accepted connection.
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const secret = this.options.secret!;
    PeerLink.accept(socket, secret, this.arrayId).then(
      (link) => {
        link.onMessage = (message) => this.firstFrame(link, message);
      },
      (error: unknown) => this.logger.warn('replication link refused', { remote: socket.remoteAddress, error: (error as Error).message }),
    );
  }

  private firstFrame(link: PeerLink, message: LinkMessage): void {
    const { header } = message;
    const pod = this.pods.get(String(header.pod));
    if (header.type === 'attach') {
      if (pod === undefined) {
        link.reply(header.id, StorageError.notFound(`this array has no pod ${String(header.pod)}`));
        return;
      }
      link.reply(header.id, null);
      if (!pod.attach(link, false)) this.logger.info('pod link refused for now (busy); the peer retries', { pod: pod.name });
      return;
    }
    if (header.type === 'async-begin') {
      // An asynchronous replication sender: the receiver answers this frame and the rest.
      new ChangesReceiver(this.array, link).accept(message);
      return;
    }
    if (header.type === 'pod-create') {
      try {
        this.joinPod(link, header);
      } catch (error) {
        link.reply(header.id, error);
      }
      return;
    }
    link.reply(header.id, StorageError.invalidArgument(`unexpected first frame ${header.type}`));
    link.close('protocol');
  }

  /** The accepting side of `pod create`. */
  private joinPod(link: PeerLink, header: LinkMessage['header']): void {
    const name = String(header.pod);
    if (this.pods.has(name)) throw StorageError.alreadyExists(`pod ${name} already exists on the peer array`);
    const config: PodConfig = {
      name,
      peer: parsePeer(header.peer),
      mediator: parseMediator(header.mediator),
      initiator: false,
      leaderId: link.peerArrayId,
      volumes: [],
      stale: false,
      survivor: false,
      cleanInSync: true,
    };
    const pod = new Pod(config, this);
    this.pods.set(name, pod);
    this.save();
    pod.start(true);
    link.reply(header.id, null, { arrayId: this.arrayId });
    pod.attach(link, false);
    this.logger.info('pod joined', { pod: name, peer: header.peer });
  }

  /** Frames for the service that arrive on a pod's link. */
  control(pod: Pod, link: PeerLink, message: LinkMessage): void {
    const { header } = message;
    const answer = (work: Promise<unknown>) =>
      work.then(
        () => link.reply(header.id, null),
        (error: unknown) => link.reply(header.id, error),
      );
    switch (header.type) {
      case 'volume-create':
        void answer(this.addVolumeLocally(pod, String(header.name), Number(header.size)));
        return;
      case 'volume-delete':
        void answer(this.removeVolumeLocally(pod, String(header.name)));
        return;
      case 'pod-delete':
        // Answer first: forgetting the pod closes this link.
        link.reply(header.id, null);
        setImmediate(() => this.forgetPod(pod));
        return;
      default:
        link.reply(header.id, StorageError.notSupported(`unknown link frame ${header.type}`));
    }
  }

  private async addVolumeLocally(pod: Pod, name: string, sizeBytes: number): Promise<void> {
    if (this.array.lookup(name)?.name === name) throw StorageError.alreadyExists(`volume ${name} already exists on the peer array: pick a name free on both`);
    await this.array.createVolume(name, sizeBytes);
    pod.config.volumes.push({ name, sizeBytes });
    this.save();
  }

  private async removeVolumeLocally(pod: Pod, name: string): Promise<void> {
    pod.config.volumes = pod.config.volumes.filter((volume) => volume.name !== name);
    this.save();
    await this.array.deleteVolume(name);
  }

  private forgetPod(pod: Pod): void {
    pod.detach();
    this.pods.delete(pod.name);
    this.save();
    this.logger.info('pod deleted', { pod: pod.name });
  }

  // ---- Management API -------------------------------------------------------------------------

  async replicate(volume: string, body: unknown): Promise<ReplicateResult> {
    const to = parsePeer((body as Record<string, unknown> | undefined)?.to);
    if (this.podOf(volume) !== null) throw StorageError.notSupported(`volume ${volume} is in a pod: it is already replicated synchronously`);
    const link = await PeerLink.dial(to, this.requireSecret(), this.arrayId);
    const key = `${volume}->${to.host}:${to.port}`;
    this.record.async ??= {};
    try {
      const result = await sendChanges(this.array, link, volume, this.record.async[key] ?? null);
      this.record.async[key] = result.snapshot;
      this.save();
      this.logger.info('replicated', { ...result, to: `${to.host}:${to.port}` });
      return result;
    } finally {
      link.close('replication run done');
    }
  }

  podOf(volume: string): string | null {
    for (const pod of this.pods.values()) if (pod.hasVolume(volume)) return pod.name;
    return null;
  }

  listPods(): Array<Record<string, unknown>> {
    return [...this.pods.values()].map((pod) => pod.status());
  }

  podStatus(name: string): Record<string, unknown> {
    return this.findPod(name).status();
  }

  private findPod(name: string): Pod {
    const pod = this.pods.get(name);
    if (pod === undefined) throw StorageError.notFound(`no pod ${name}; "pstorage pod list" shows the pods of this array`);
    return pod;
  }

  async createPod(body: unknown): Promise<Record<string, unknown>> {
    const fields = (body ?? {}) as Record<string, unknown>;
    const name = String(fields.name ?? '');
    if (!POD_NAME.test(name)) throw StorageError.invalidArgument(`pod name "${name}": use 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    if (this.pods.has(name)) throw StorageError.alreadyExists(`pod ${name} already exists; "pstorage pod status ${name}" shows it`);
    const peer = parsePeer(fields.peer);
    const mediator = parseMediator(fields.mediator);
    const secret = this.requireSecret();
    const link = await PeerLink.dial(peer, secret, this.arrayId);
    try {
      await link.ask({ type: 'pod-create', pod: name, mediator, peer: `${this.boundAddress!.host}:${this.boundAddress!.port}` });
    } catch (error) {
      link.close('pod create refused');
      throw error;
    }
    const config: PodConfig = { name, peer, mediator, initiator: true, leaderId: this.arrayId, volumes: [], stale: false, survivor: false, cleanInSync: true };
    const pod = new Pod(config, this);
    this.pods.set(name, pod);
    this.save();
    pod.attach(link, true);
    pod.start(true);
    await this.waitInSync(pod, 5000);
    this.logger.info('pod created', { pod: name, peer: fields.peer, mediator });
    return pod.status();
  }

  private async waitInSync(pod: Pod, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (pod.state !== 'in-sync' && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
  }

  async deletePod(name: string): Promise<Record<string, unknown>> {
    const pod = this.findPod(name);
    let peerToo = false;
    if (pod.linkUp) {
      try {
        await pod.requireLink().ask({ type: 'pod-delete', pod: name });
        peerToo = true;
      } catch (error) {
        this.logger.warn('the peer did not delete the pod', { pod: name, error: (error as Error).message });
      }
    }
    const volumes = pod.config.volumes.map((volume) => volume.name);
    this.forgetPod(pod);
    return { deleted: name, peerToo, volumesKeptAsLocal: volumes };
  }

  async createPodVolume(podName: string, body: unknown): Promise<{ name: string; sizeBytes: number; pod: string }> {
    const pod = this.findPod(podName);
    const fields = (body ?? {}) as Record<string, unknown>;
    const name = String(fields.name ?? '');
    const sizeBytes = typeof fields.size === 'number' ? fields.size : parseSizeBytes(String(fields.size));
    const link = pod.requireLink();
    if (this.array.lookup(name)?.name === name) throw StorageError.alreadyExists(`volume ${name} already exists on this array`);
    await link.ask({ type: 'volume-create', name, size: sizeBytes });
    try {
      await this.addVolumeLocally(pod, name, sizeBytes);
    } catch (error) {
      await link.ask({ type: 'volume-delete', name }).catch(() => undefined);
      throw error;
    }
    return { name, sizeBytes, pod: podName };
  }

  async close(): Promise<void> {
    for (const pod of this.pods.values()) pod.close();
    if (this.pods.size > 0) this.save();
    const closed = new Promise<void>((resolve) => (this.server === null ? resolve() : this.server.close(() => resolve())));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }
}
