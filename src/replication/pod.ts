/**
 * A pod: volumes stretched across two arrays, writable on both, kept identical synchronously.
 *
 * Ordering. One array of the pod, the leader, orders every change: a write (TRIM, WRITE_ZEROES)
 * that reaches the leader is submitted to its local volume and sent to the peer as a `rep` frame
 * in the same turn, so the two arrays see the same sequence (a volume applies changes in submit
 * order; TCP keeps the frames in order; the peer submits `rep`s in arrival order). A write that
 * reaches the other array (the follower) is forwarded (`fwd`) to the leader and goes the same way;
 * the follower never applies a client's write itself while the link is up. A write is
 * acknowledged only when both arrays applied it. FLUSH (and FUA) run on both arrays. Reads are
 * served locally, except on an array that is being resynced, which forwards reads of the chunks
 * it has not received yet.
 *
 * States (what `pod status` shows) and transitions:
 *
 *   state      | link | serves I/O | what it means
 *   in-sync    | up   | yes        | both copies identical; every change applied on both
 *   resyncing  | up   | yes        | the changed chunks are being copied from the up-to-date array
 *   degraded   | down | yes, alone | won the mediator race (or the peer is known out of date);
 *              |      |            | every change goes in the changed-block record
 *   suspended  | any  | no (EIO)   | lost the race, or the peer and the mediator are both
 *              |      |            | unreachable, or out of date and waiting for a resync
 *
 *   in-sync   --link lost--> (hold I/O, ask the mediator) --won--> degraded
 *                                                          --lost--> suspended (out of date)
 *                                                          --no mediator--> suspended (retry 1 s)
 *   resyncing --link lost--> degraded (source: the peer is out of date, no race needed)
 *                            suspended (target: its copy is out of date)
 *   degraded|suspended --link back--> resyncing (the record merged from both) --done--> in-sync
 *
 * Resync copies the merged changed-block record, 64 KiB chunk by chunk (64 in flight), on the same
 * ordered link as new writes. A chunk that reads as zeroes goes as a header only. When either
 * record was lost (a restart, so every chunk is in it), any other chunk is first offered as
 * SHA-256 sums of its 4 KiB blocks, and its bytes are sent only when the peer's copy differs (a
 * full resync after a crash mostly finds the data already there). A chunk written
 * again while it was being read is read again, so a copy never lands after a newer write.
 * Writes cross the link in reduced form where that is cheap to find (write-packing.ts: zeros as a
 * header, LZ4 when it pays, else as they are). The receiver expands them before anything else
 * looks at them; each array then reduces on its own (dedup against the peer's fingerprints would
 * cost a round trip per write and is not done).
 *
 * The mediator (mediator.ts) is asked only when the link fails; with etcd down and the link up,
 * nothing changes. Requests that arrive while the mediator is being asked are held (bounded by
 * the mediator timeout) and then served, or failed with EIO.
 *
 * Crash: the pod's configuration and the two flags that matter for safety ("out of date",
 * "survivor") are written to disk (pod-store.ts) before the state they allow is entered. The
 * changed-block record is in memory; an array that restarts without a clean stop in sync marks
 * every chunk changed, so its next resync copies everything (slower, never wrong).
 */
import { createHash } from 'node:crypto';
import { IoCommand, submitAsync, type BlockDevice, type IoRequest, type ReadExtent, type StatusExtent, type WriteOptions, type ZeroOptions } from '../common/block-device.js';
import { StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { ChangedBlocks, RESYNC_CHUNK_BYTES, type ChangedRecordWire } from './changed-blocks.js';
import type { LinkMessage } from './link-protocol.js';
import { NOT_PACKED, isAllZero, packWrite, unpackWrite, type PackedWrite } from './write-packing.js';
import { Mediator } from './mediator.js';
import { errorFromWire, type PeerLink, type TcpPeerAddress } from './peer-link.js';

export type PodState = 'in-sync' | 'resyncing' | 'degraded' | 'suspended';

/** What is stored per pod (pod-store.ts). */
export interface PodConfig {
  name: string;
  /** The peer array's replication listener. */
  peer: TcpPeerAddress;
  mediator: string;
  /** This array dials the peer (the one where `pod create` ran); the other accepts. */
  initiator: boolean;
  /** Array id of the array that orders the pod's writes. */
  leaderId: string;
  volumes: Array<{ name: string; sizeBytes: number }>;
  /** This array's copy is behind the peer's: it must never serve the pod alone. */
  stale: boolean;
  /** This array served alone: the peer needs a resync from it. */
  survivor: boolean;
  /** The process stopped cleanly with the pod in sync (else the changed-block record is lost). */
  cleanInSync: boolean;
}

export interface PodHost {
  readonly arrayId: string;
  readonly logger: Logger;
  localDevice(volume: string): BlockDevice | undefined;
  save(): void;
  /** Dials the peer and attaches the link to the pod (the initiator's reconnect loop). */
  dial(pod: Pod): Promise<PeerLink>;
  /** Control frames that are not the pod's own (volume create/delete, pod delete). */
  control(pod: Pod, link: PeerLink, message: LinkMessage): void;
}

const RECONNECT_MS = 300;
const ARBITRATE_RETRY_MS = 1000;
const STARTUP_WAIT_MS = 3000;
const RESYNC_WINDOW = 64;
/** Resync compares 4 KiB blocks by SHA-256 before sending them (the peer may hold them already). */
const SUM_BLOCK_BYTES = 4096;
const MAX_HELD_REQUESTS = 4096;

/** One change or flush in flight through the pod. */
interface PodOp {
  volume: string;
  request: IoRequest;
  local: BlockDevice;
  /** Applied (or nothing to apply yet: a forwarded write). */
  localDone: boolean;
  localError: unknown;
  /** Forwarded to the leader and not applied here. */
  forwarded: boolean;
  peer: 'waiting' | 'done' | 'lost';
  peerError: unknown;
  finish: (error: unknown) => void;
}

function eio(why: string): StorageError {
  return StorageError.io(why);
}

function inner(request: IoRequest, command: IoCommand, done: (error: unknown, result: IoRequest) => void): IoRequest {
  return {
    command,
    offsetBytes: request.offsetBytes,
    lengthBytes: request.lengthBytes,
    data: request.data,
    fua: request.fua,
    noHole: request.noHole,
    fastZero: request.fastZero,
    result: null,
    done: (finished, error) => done(error, finished),
  };
}

/** SHA-256 of every 4 KiB block of `data`, concatenated. */
function blockSums(data: Buffer): Buffer {
  const sums = Buffer.allocUnsafe(Math.ceil(data.length / SUM_BLOCK_BYTES) * 32);
  for (let at = 0, index = 0; at < data.length; at += SUM_BLOCK_BYTES, index++) {
    createHash('sha256').update(data.subarray(at, at + SUM_BLOCK_BYTES)).digest().copy(sums, index * 32);
  }
  return sums;
}

export class Pod {
  state: PodState = 'suspended';
  reason = 'waiting for the peer array';
  readonly changed = new ChangedBlocks();
  /** Figures for `pod status`. */
  readonly figures = { resyncDoneChunks: 0, resyncTotalChunks: 0, resyncSkippedChunks: 0, resyncStartedMs: 0, lastResyncMs: null as number | null, lastResyncChunks: 0, linkDataBytesSent: 0, failovers: 0, writeBytes: 0, writeBytesSent: 0 };

  private link: PeerLink | null = null;
  private holding = false;
  private arbitrating = false;
  private held: Array<() => void> = [];
  private readonly inFlight = new Set<PodOp>();
  private readonly devices = new Map<string, PodVolumeDevice>();
  private readonly mediator: Mediator;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  /** While this array resyncs the peer: the write counter at each chunk's last change. */
  private writeCounter = 0;
  private lastWrite: Map<string, number> | null = null;
  /** The record was rebuilt as "everything" after a restart: most chunks are likely the same on both. */
  private recordLost = false;
  /** This resync offers block sums before data (see the note at the top). */
  private verifyBeforeSend = false;

  constructor(
    readonly config: PodConfig,
    private readonly host: PodHost,
  ) {
    this.mediator = new Mediator(config.mediator, config.name, host.arrayId, host.logger.child({ pod: config.name }));
  }

  get name(): string {
    return this.config.name;
  }
  get isLeader(): boolean {
    return this.config.leaderId === this.host.arrayId;
  }
  get linkUp(): boolean {
    return this.link !== null && this.link.isOpen;
  }
  private get logger(): Logger {
    return this.host.logger;
  }

  /** After loading from disk (or creating): start the state machine. */
  start(fresh: boolean): void {
    if (!fresh && !this.config.cleanInSync) {
      // The changed-block record did not survive: everything may differ.
      for (const volume of this.config.volumes) this.changed.markAll(volume.name, volume.sizeBytes);
      this.recordLost = true;
    }
    this.config.cleanInSync = false;
    this.host.save();
    if (this.config.stale) this.setState('suspended', 'out of date: waiting for a resync from the peer array');
    if (this.config.initiator) this.scheduleDial(0);
    if (!fresh) this.schedule(STARTUP_WAIT_MS, () => {
      if (!this.linkUp && this.state === 'suspended' && !this.config.stale) void this.arbitrate();
    });
  }

  /** The NBD device for a pod volume (one per volume, shared by its connections). */
  deviceFor(volume: string, local: BlockDevice): PodVolumeDevice {
    let device = this.devices.get(volume);
    if (device === undefined || device.local !== local) {
      device = new PodVolumeDevice(this, volume, local);
      this.devices.set(volume, device);
    }
    return device;
  }

  hasVolume(volume: string): boolean {
    return this.config.volumes.some((entry) => entry.name === volume);
  }

  /** The link for control requests (volume create); throws when the pod cannot reach its peer. */
  requireLink(): PeerLink {
    if (this.link === null || !this.link.isOpen || this.state !== 'in-sync') {
      throw StorageError.busy(`pod ${this.name} is ${this.state}${this.reason ? ` (${this.reason})` : ''}: volumes can be added only while it is in-sync`);
    }
    return this.link;
  }

  status(): Record<string, unknown> {
    const changedChunks = this.changed.chunkCount;
    return {
      name: this.name,
      state: this.state,
      reason: this.reason,
      role: this.isLeader ? 'leader' : 'follower',
      link: this.linkUp ? 'up' : 'down',
      peer: `${this.config.peer.host}:${this.config.peer.port}`,
      mediator: this.config.mediator,
      volumes: this.config.volumes.map((volume) => volume.name),
      outOfDate: this.config.stale,
      survivor: this.config.survivor,
      changedChunks,
      changedBytes: changedChunks * RESYNC_CHUNK_BYTES,
      resync: this.state === 'resyncing' ? { doneChunks: this.figures.resyncDoneChunks, totalChunks: this.figures.resyncTotalChunks } : null,
      lastResyncMs: this.figures.lastResyncMs,
      lastResyncChunks: this.figures.lastResyncChunks,
      lastResyncSkippedChunks: this.figures.resyncSkippedChunks,
      linkDataBytesSent: this.figures.linkDataBytesSent + (this.link?.sentDataBytes ?? 0),
      // Synchronous writes this array sent to its peer: bytes written, and bytes they took on the link.
      linkWriteBytes: this.figures.writeBytes,
      linkWriteBytesSent: this.figures.writeBytesSent,
      failovers: this.figures.failovers,
    };
  }

  // ---- I/O ------------------------------------------------------------------------------------

  submit(volume: string, local: BlockDevice, request: IoRequest): void {
    if (this.holding) {
      if (this.held.length >= MAX_HELD_REQUESTS) {
        request.done(request, eio(`pod ${this.name}: too many requests held while the mediator decides`));
        return;
      }
      this.held.push(() => this.submit(volume, local, request));
      return;
    }
    if (this.state === 'suspended') {
      request.done(request, eio(`pod ${this.name} is suspended on this array (${this.reason})`));
      return;
    }
    if (this.state !== 'degraded' && !this.linkUp) {
      request.done(request, eio(`pod ${this.name}: the link to the peer array is down`));
      return;
    }
    const command = request.command;
    if (command === IoCommand.Read || command === IoCommand.Cache) {
      if (command === IoCommand.Read && this.state === 'resyncing' && this.config.stale && this.changed.overlaps(volume, request.offsetBytes, request.lengthBytes)) {
        this.forwardRead(volume, request);
        return;
      }
      local.submit(request);
      return;
    }
    if (this.state === 'degraded') {
      if (command !== IoCommand.Flush) this.changed.mark(volume, request.offsetBytes, request.lengthBytes);
      local.submit(request);
      return;
    }
    if (command === IoCommand.Flush || this.isLeader) this.sequence(volume, local, request, (error) => request.done(request, error));
    else this.forward(volume, local, request);
  }

  /** Leader (or a flush anywhere): apply here and on the peer, in this order, in this turn. */
  private sequence(volume: string, local: BlockDevice, request: IoRequest, finish: (error: unknown) => void): void {
    const op: PodOp = { volume, request, local, localDone: false, localError: null, forwarded: false, peer: 'waiting', peerError: null, finish };
    this.inFlight.add(op);
    const command = request.command;
    if (this.lastWrite !== null && command !== IoCommand.Flush) this.noteWrite(volume, request.offsetBytes, request.lengthBytes);
    local.submit(
      inner(request, command, (error) => {
        op.localDone = true;
        op.localError = error;
        this.complete(op);
      }),
    );
    if (command === IoCommand.Flush) {
      this.link!.request({ type: 'flush' }, null, (error, reply) => this.peerAnswered(op, error, reply));
      return;
    }
    const packed = command === IoCommand.Write ? this.pack(request.data!) : NOT_PACKED;
    const header = { type: 'rep', v: volume, c: command, o: request.offsetBytes, l: request.lengthBytes, f: request.fua, nh: request.noHole, fz: request.fastZero, z: packed.z, lz4: packed.lz4 };
    this.link!.request(header, packed.bytes, (error, reply) => this.peerAnswered(op, error, reply));
  }

  /** Follower: the leader orders the write; it comes back to us as a `rep` before the answer. */
  private forward(volume: string, local: BlockDevice, request: IoRequest): void {
    const op: PodOp = { volume, request, local, localDone: true, localError: null, forwarded: true, peer: 'waiting', peerError: null, finish: (error) => request.done(request, error) };
    this.inFlight.add(op);
    const packed = request.command === IoCommand.Write ? this.pack(request.data!) : NOT_PACKED;
    const header = { type: 'fwd', v: volume, c: request.command, o: request.offsetBytes, l: request.lengthBytes, f: request.fua, nh: request.noHole, fz: request.fastZero, z: packed.z, lz4: packed.lz4 };
    this.link!.request(header, packed.bytes, (error, reply) => this.peerAnswered(op, error, reply));
  }

  /** A write's payload in its link form, counted for `pod status`. */
  private pack(data: Buffer): PackedWrite {
    const packed = packWrite(data);
    this.figures.writeBytes += data.length;
    this.figures.writeBytesSent += packed.bytes?.length ?? 0;
    return packed;
  }

  private peerAnswered(op: PodOp, linkError: StorageError | null, reply: LinkMessage | null): void {
    if (linkError !== null) {
      // The link failed with this change unconfirmed: the mediator's answer decides (linkLost).
      op.peer = 'lost';
      return;
    }
    op.peer = 'done';
    op.peerError = errorFromWire(reply!.header.error);
    this.complete(op);
  }

  private complete(op: PodOp): void {
    if (!op.localDone || op.peer !== 'done') return;
    if (!this.inFlight.delete(op)) return;
    op.finish(op.localError ?? op.peerError);
  }

  private forwardRead(volume: string, request: IoRequest): void {
    this.link!.request({ type: 'read', v: volume, o: request.offsetBytes, l: request.lengthBytes }, null, (linkError, reply) => {
      const error = linkError ?? errorFromWire(reply!.header.error);
      if (error === null) {
        const data = reply!.data ?? Buffer.alloc(request.lengthBytes);
        request.result = { data, extents: [{ lengthBytes: request.lengthBytes, data }] };
      }
      request.done(request, error);
    });
  }

  private noteWrite(volume: string, offsetBytes: number, lengthBytes: number): void {
    const counter = ++this.writeCounter;
    const first = Math.floor(offsetBytes / RESYNC_CHUNK_BYTES);
    const last = Math.floor((offsetBytes + Math.max(lengthBytes, 1) - 1) / RESYNC_CHUNK_BYTES);
    for (let chunk = first; chunk <= last; chunk++) this.lastWrite!.set(`${volume}:${chunk}`, counter);
  }

  // ---- Frames from the peer -------------------------------------------------------------------

  private onMessage(link: PeerLink, message: LinkMessage): void {
    if (link !== this.link) return;
    const { header } = message;
    let data = message.data;
    if ((header.type === 'rep' || header.type === 'fwd') && Number(header.c) === IoCommand.Write) {
      try {
        data = unpackWrite(header, data, Number(header.l));
      } catch (error) {
        link.reply(header.id, error instanceof StorageError ? error : StorageError.invalidArgument(`peer sent a write that does not unpack: ${(error as Error).message}`));
        return;
      }
    }
    switch (header.type) {
      case 'rep':
        this.applyFromPeer(link, header, data);
        return;
      case 'fwd': {
        const local = this.host.localDevice(String(header.v));
        if (!this.isLeader || local === undefined || (this.state !== 'in-sync' && this.state !== 'resyncing')) {
          link.reply(header.id, eio(`pod ${this.name}: this array cannot order writes now (${this.state})`));
          return;
        }
        const request = this.requestFrom(header, data, () => undefined);
        this.submitAsLeader(String(header.v), local, request, (error) => link.reply(header.id, error));
        return;
      }
      case 'flush':
        this.flushLocal((error) => link.reply(header.id, error));
        return;
      case 'read':
        this.readForPeer(link, header);
        return;
      case 'resync':
        this.applyResync(link, header, data);
        return;
      case 'resync-sums':
        this.compareSums(link, header, data);
        return;
      case 'resync-done':
        void this.finishResyncAsTarget(link, header.id);
        return;
      case 'pod-hello':
        this.answerHello(link, header);
        return;
      default:
        this.host.control(this, link, message);
    }
  }

  /** A forwarded change, ordered here; held like any request while the mediator decides. */
  private submitAsLeader(volume: string, local: BlockDevice, request: IoRequest, finish: (error: unknown) => void): void {
    if (this.holding) {
      this.held.push(() => this.submitAsLeader(volume, local, request, finish));
      return;
    }
    if (!this.linkUp || (this.state !== 'in-sync' && this.state !== 'resyncing')) {
      finish(eio(`pod ${this.name} is ${this.state}`));
      return;
    }
    this.sequence(volume, local, request, finish);
  }

  private requestFrom(header: LinkMessage['header'], data: Buffer | null, done: (error: unknown, request: IoRequest) => void): IoRequest {
    const command = Number(header.c) as IoCommand;
    return {
      command,
      offsetBytes: Number(header.o),
      lengthBytes: Number(header.l),
      data: command === IoCommand.Write ? data : null,
      fua: header.f === true,
      noHole: header.nh === true,
      fastZero: header.fz === true,
      result: null,
      done: (request, error) => done(error, request),
    };
  }

  private checkRange(local: BlockDevice, header: LinkMessage['header'], data: Buffer | null): StorageError | null {
    const offsetBytes = Number(header.o);
    const lengthBytes = Number(header.l);
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > local.sizeBytes) {
      return StorageError.outOfRange(`pod ${this.name}: peer sent a range outside the volume`);
    }
    if (Number(header.c) === IoCommand.Write && (data === null || data.length !== lengthBytes)) return StorageError.invalidArgument('peer sent a write whose payload does not match its length');
    return null;
  }

  /** The leader's ordered change: apply it here in arrival order, answer when applied. */
  private applyFromPeer(link: PeerLink, header: LinkMessage['header'], data: Buffer | null): void {
    const local = this.host.localDevice(String(header.v));
    if (local === undefined) {
      link.reply(header.id, StorageError.notFound(`volume ${String(header.v)} of pod ${this.name} is missing on this array`));
      return;
    }
    const bad = this.checkRange(local, header, data);
    if (bad !== null) {
      link.reply(header.id, bad);
      return;
    }
    local.submit(this.requestFrom(header, data, (error) => link.reply(header.id, error)));
  }

  /** FLUSH covers every volume of the array (one flush point), so any volume of the pod will do. */
  private flushLocal(done: (error: unknown) => void): void {
    const first = this.config.volumes[0];
    const local = first === undefined ? undefined : this.host.localDevice(first.name);
    if (local === undefined) {
      done(null);
      return;
    }
    local.flush().then(
      () => done(null),
      (error: unknown) => done(error),
    );
  }

  private readForPeer(link: PeerLink, header: LinkMessage['header']): void {
    const local = this.host.localDevice(String(header.v));
    if (local === undefined) {
      link.reply(header.id, StorageError.notFound(`volume ${String(header.v)} missing`));
      return;
    }
    const bad = this.checkRange(local, header, null);
    if (bad !== null) {
      link.reply(header.id, bad);
      return;
    }
    const request = this.requestFrom({ ...header, c: IoCommand.Read }, null, (error, finished) => {
      link.reply(header.id, error, {}, error === null ? finished.result!.data : null);
    });
    local.submit(request);
  }

  // ---- Link up / link down --------------------------------------------------------------------

  /** A new authenticated link for this pod. The dialler asks, the acceptor decides (answerHello). */
  attach(link: PeerLink, dialled: boolean): boolean {
    if (this.closed || this.arbitrating || this.linkUp) {
      // One link at a time, and none while the mediator decides: the dialler tries again.
      link.close(this.closed ? 'pod closed' : 'busy');
      return false;
    }
    this.link = link;
    link.onMessage = (message) => this.onMessage(link, message);
    link.onClose = (reason) => this.linkLost(link, reason);
    if (!dialled) return true;
    // Hold I/O while the two states are merged, so no change slips between record and decision.
    this.holding = true;
    link.request({ type: 'pod-hello', pod: this.name, ...this.helloState() }, null, (error, reply) => {
      if (error !== null || link !== this.link) return; // linkLost released the hold
      const remote = errorFromWire(reply!.header.error);
      if (remote !== null) {
        this.logger.warn('the peer refused the pod link', { pod: this.name, error: remote.message });
        link.close(remote.message);
        return;
      }
      this.applyDecision(link, reply!.header.decision as Decision);
      this.release();
    });
    return true;
  }

  private helloState(): HelloState {
    return { arrayId: this.host.arrayId, stale: this.config.stale, survivor: this.config.survivor, leaderId: this.config.leaderId, recordLost: this.recordLost, changed: this.changed.toWire() };
  }

  private answerHello(link: PeerLink, header: LinkMessage['header']): void {
    const mine = this.helloState();
    const theirs = header as unknown as HelloState;
    const decision = decide(theirs, mine);
    // The answer goes out before anything the decision starts: a resync whose first reads complete
    // at once would otherwise put chunks on the link ahead of it, and the dialler, applying them
    // before it merges the decision, would put them back in its record (copied again next time).
    link.reply(header.id, null, { decision });
    this.applyDecision(link, decision);
  }

  private applyDecision(link: PeerLink, decision: Decision): void {
    this.changed.merge(decision.changed);
    this.config.leaderId = decision.sourceId;
    this.verifyBeforeSend = decision.verify === true;
    const source = decision.sourceId === this.host.arrayId;
    this.logger.info('pod link up', { pod: this.name, source, changedChunks: this.changed.chunkCount, leader: source });
    if (this.changed.chunkCount === 0) {
      this.recordLost = false;
      const wasSurvivor = this.config.survivor;
      this.config.stale = false;
      this.config.survivor = false;
      this.host.save();
      this.setState('in-sync', '');
      if (wasSurvivor) void this.mediator.release();
      return;
    }
    if (source) {
      this.config.survivor = true;
      this.host.save();
      this.setState('resyncing', 'copying changed chunks to the peer array');
      void this.runResync(link);
    } else {
      this.config.stale = true;
      this.config.survivor = false;
      this.host.save();
      this.setState('resyncing', 'receiving changed chunks from the peer array');
    }
  }

  private linkLost(link: PeerLink, reason: string): void {
    if (link !== this.link) return;
    this.link = null;
    this.figures.linkDataBytesSent += link.sentDataBytes;
    this.logger.warn('pod link lost', { pod: this.name, state: this.state, reason });
    if (this.closed) return;
    if (this.state === 'in-sync') {
      void this.arbitrate();
    } else if (this.state === 'resyncing' && this.config.stale) {
      this.settleLost(false);
      this.setState('suspended', 'out of date: the resync was interrupted; it resumes when the link returns');
    } else if (this.state === 'resyncing') {
      // The peer is marked out of date on its disk and will not serve alone: go on without a race.
      this.settleLost(true);
      this.figures.failovers++;
      this.setState('degraded', 'the peer array is out of date and unreachable; recording changes');
    } else {
      this.settleLost(this.state === 'degraded');
    }
    // A hold taken for a pod-hello that will never be answered ends here.
    if (!this.arbitrating && this.holding) this.release();
    if (this.config.initiator) this.scheduleDial(RECONNECT_MS);
  }

  /** Resolves the changes whose peer half was lost with the link: kept (won) or failed. */
  private settleLost(won: boolean): void {
    for (const op of [...this.inFlight]) {
      if (op.peer !== 'lost') continue;
      if (op.request.command !== IoCommand.Flush) this.changed.mark(op.volume, op.request.offsetBytes, op.request.lengthBytes);
      op.peer = 'done';
      if (!won) {
        op.peerError = eio(`pod ${this.name}: the peer array was lost before it confirmed this change, and this array may not go on alone`);
        this.complete(op);
        continue;
      }
      if (op.forwarded) {
        op.forwarded = false;
        op.localDone = false;
        op.local.submit(
          inner(op.request, op.request.command, (error) => {
            op.localDone = true;
            op.localError = error;
            this.complete(op);
          }),
        );
      } else {
        this.complete(op);
      }
    }
  }

  /** Asks the mediator who goes on. I/O is held meanwhile. */
  private async arbitrate(): Promise<void> {
    if (this.arbitrating) return;
    this.arbitrating = true;
    this.holding = true;
    this.setState(this.state, 'the peer array is unreachable: asking the mediator');
    const started = Date.now();
    const result = await this.mediator.acquire();
    if (this.closed) return;
    this.logger.warn('mediator decided', { pod: this.name, result, ms: Date.now() - started });
    if (result === 'won') {
      this.config.survivor = true;
      this.host.save();
      this.figures.failovers++;
      this.settleLost(true);
      this.setState('degraded', 'won the mediator race: serving alone, recording changes');
    } else if (result === 'lost') {
      this.config.stale = true;
      this.host.save();
      this.settleLost(false);
      this.setState('suspended', 'the peer array won the mediator race: out of date until resynced');
    } else {
      this.settleLost(false);
      this.setState('suspended', 'the peer array and the mediator are both unreachable');
      this.schedule(ARBITRATE_RETRY_MS, () => {
        if (!this.linkUp && this.state === 'suspended' && !this.config.stale) void this.arbitrate();
      });
    }
    this.arbitrating = false;
    this.release();
  }

  private release(): void {
    this.holding = false;
    const held = this.held;
    this.held = [];
    for (const resume of held) resume();
  }

  private scheduleDial(delayMs: number): void {
    setTimeout(() => {
      if (this.closed || this.linkUp) return;
      this.host.dial(this).then(
        (link) => this.attach(link, true),
        (error: unknown) => {
          this.logger.debug('pod dial failed', { pod: this.name, error: (error as Error).message });
          this.scheduleDial(RECONNECT_MS);
        },
      );
    }, delayMs).unref();
  }

  private schedule(delayMs: number, work: () => void): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.closed) work();
    }, delayMs);
    this.timer.unref();
  }

  private setState(state: PodState, reason: string): void {
    if (state !== this.state) this.logger.info('pod state', { pod: this.name, from: this.state, to: state, reason });
    this.state = state;
    this.reason = reason;
  }

  // ---- Resync ---------------------------------------------------------------------------------

  /** Source side: copy every chunk of the record, a window at a time; resumable. */
  private async runResync(link: PeerLink): Promise<void> {
    const startedMs = Date.now();
    const totalChunks = this.changed.chunkCount;
    this.figures.resyncStartedMs = startedMs;
    this.figures.resyncTotalChunks = totalChunks;
    this.figures.resyncDoneChunks = 0;
    this.figures.resyncSkippedChunks = 0;
    this.lastWrite = new Map();
    try {
      for (const volume of this.changed.volumes()) {
        const local = this.host.localDevice(volume);
        if (local === undefined) {
          this.changed.forgetVolume(volume);
          continue;
        }
        await this.copyVolume(link, volume, local);
      }
      if (link !== this.link) return;
      await link.ask({ type: 'resync-done' });
      await this.host.localDevice(this.config.volumes[0]?.name ?? '')?.flush();
    } catch (error) {
      this.logger.warn('resync paused', { pod: this.name, error: (error as Error).message, leftChunks: this.changed.chunkCount });
      return;
    } finally {
      this.lastWrite = null;
    }
    if (link !== this.link || this.changed.chunkCount !== 0) return;
    this.figures.lastResyncMs = Date.now() - startedMs;
    this.figures.lastResyncChunks = totalChunks;
    this.recordLost = false;
    this.config.survivor = false;
    this.host.save();
    this.setState('in-sync', '');
    this.logger.info('resync done', { pod: this.name, chunks: totalChunks, ms: this.figures.lastResyncMs });
    void this.mediator.release();
  }

  private copyVolume(link: PeerLink, volume: string, local: BlockDevice): Promise<void> {
    const chunks = this.changed.chunksOf(volume);
    let next = 0;
    let running = 0;
    return new Promise((resolve, reject) => {
      let failed = false;
      const pump = (): void => {
        while (!failed && running < RESYNC_WINDOW && next < chunks.length) {
          const chunk = chunks[next++]!;
          running++;
          this.copyChunk(link, volume, local, chunk, 0, (error) => {
            running--;
            if (error !== null && error !== undefined) {
              if (!failed) reject(error);
              failed = true;
              return;
            }
            if (next >= chunks.length && running === 0) resolve();
            else pump();
          });
        }
        if (!failed && next >= chunks.length && running === 0) resolve();
      };
      pump();
    });
  }

  private copyChunk(link: PeerLink, volume: string, local: BlockDevice, chunk: number, attempt: number, done: (error: unknown) => void): void {
    const offsetBytes = chunk * RESYNC_CHUNK_BYTES;
    const lengthBytes = Math.min(RESYNC_CHUNK_BYTES, local.sizeBytes - offsetBytes);
    if (lengthBytes <= 0 || link !== this.link) {
      if (lengthBytes <= 0) this.changed.remove(volume, chunk);
      done(lengthBytes <= 0 ? null : eio('link changed'));
      return;
    }
    const key = `${volume}:${chunk}`;
    const readAt = this.writeCounter;
    const read: IoRequest = {
      command: IoCommand.Read,
      offsetBytes,
      lengthBytes,
      data: null,
      fua: false,
      noHole: false,
      fastZero: false,
      result: null,
      done: (finished, error) => {
        if (error !== null && error !== undefined) {
          done(error);
          return;
        }
        // A write ordered after the read started went to the peer before this copy would:
        // the copy would be older than it. Read again (a chunk under constant writes is bounded
        // by the attempts; it is left in the record and retried at the next resync).
        if ((this.lastWrite?.get(key) ?? 0) > readAt) {
          if (attempt < 16) this.copyChunk(link, volume, local, chunk, attempt + 1, done);
          else done(eio(`chunk ${chunk} of ${volume} kept changing during the resync`));
          return;
        }
        const data = finished.result!.data;
        const zero = isAllZero(data);
        const send = () =>
          link.request({ type: 'resync', v: volume, o: offsetBytes, l: lengthBytes, z: zero, chunk }, zero ? null : data, (linkError, reply) => {
            const failure = linkError ?? errorFromWire(reply!.header.error);
            if (failure === null) {
              this.changed.remove(volume, chunk);
              this.figures.resyncDoneChunks++;
            }
            done(failure);
          });
        if (zero || !this.verifyBeforeSend) {
          send();
          return;
        }
        // Ask first whether the peer already holds these bytes (a full resync after a crash
        // mostly finds it does): 32 bytes per 4 KiB block cross the link instead of 4 KiB.
        link.request({ type: 'resync-sums', v: volume, o: offsetBytes, l: lengthBytes, chunk }, blockSums(data), (linkError, reply) => {
          const failure = linkError ?? errorFromWire(reply!.header.error);
          if (failure !== null) {
            done(failure);
          } else if (reply!.header.same === true) {
            this.changed.remove(volume, chunk);
            this.figures.resyncDoneChunks++;
            this.figures.resyncSkippedChunks++;
            done(null);
          } else if ((this.lastWrite?.get(key) ?? 0) > readAt) {
            this.copyChunk(link, volume, local, chunk, attempt + 1, done);
          } else {
            send();
          }
        });
      },
    };
    local.submit(read);
  }

  /** Target side of `resync-sums`: do we hold exactly these blocks already? */
  private compareSums(link: PeerLink, header: LinkMessage['header'], sums: Buffer | null): void {
    const volume = String(header.v);
    const local = this.host.localDevice(volume);
    const bad = local === undefined ? StorageError.notFound(`volume ${volume} missing on this array`) : this.checkRange(local, { ...header, c: IoCommand.Read }, null);
    if (bad !== null) {
      link.reply(header.id, bad);
      return;
    }
    local!.submit(
      this.requestFrom({ ...header, c: IoCommand.Read }, null, (error, finished) => {
        if (error !== null && error !== undefined) {
          link.reply(header.id, error);
          return;
        }
        const same = sums !== null && blockSums(finished.result!.data).equals(sums);
        if (same) this.changed.remove(volume, Number(header.chunk));
        link.reply(header.id, null, { same });
      }),
    );
  }

  private applyResync(link: PeerLink, header: LinkMessage['header'], data: Buffer | null): void {
    const volume = String(header.v);
    const local = this.host.localDevice(volume);
    if (local === undefined) {
      link.reply(header.id, StorageError.notFound(`volume ${volume} missing on this array`));
      return;
    }
    const zero = header.z === true;
    const bad = this.checkRange(local, { ...header, c: zero ? IoCommand.WriteZeroes : IoCommand.Write }, data);
    if (bad !== null) {
      link.reply(header.id, bad);
      return;
    }
    const request = this.requestFrom({ ...header, c: zero ? IoCommand.WriteZeroes : IoCommand.Write }, data, (error) => {
      if (error === null || error === undefined) {
        this.changed.remove(volume, Number(header.chunk));
        this.figures.resyncDoneChunks++;
      }
      link.reply(header.id, error);
    });
    local.submit(request);
  }

  private async finishResyncAsTarget(link: PeerLink, id: unknown): Promise<void> {
    try {
      // Durable before this array calls itself up to date again.
      await this.host.localDevice(this.config.volumes[0]?.name ?? '')?.flush();
    } catch (error) {
      link.reply(id, error);
      return;
    }
    if (link !== this.link) return;
    this.changed.clear();
    this.recordLost = false;
    this.config.stale = false;
    this.host.save();
    this.setState('in-sync', '');
    link.reply(id, null);
  }

  // ---- Lifecycle ------------------------------------------------------------------------------

  /** Clean stop: remember whether the record was empty (in sync), so a restart need not copy all. */
  close(): void {
    if (this.closed) return;
    this.config.cleanInSync = this.state === 'in-sync' && this.changed.chunkCount === 0 && this.inFlight.size === 0;
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.link?.close('the array is shutting down');
    this.mediator.close();
    for (const resume of this.held.splice(0)) resume();
  }

  /**
   * Deleting the pod: forget the link without failing over. NBD connections opened before keep
   * this pod's device and get EIO from now on; a new connection gets the local volume.
   */
  detach(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    const link = this.link;
    this.link = null;
    link?.close('pod deleted');
    this.mediator.close();
  }
}

interface HelloState {
  arrayId: string;
  recordLost?: boolean;
  stale: boolean;
  survivor: boolean;
  leaderId: string;
  changed: ChangedRecordWire;
}

export interface Decision {
  /** The array with the up-to-date copy; it leads the pod from now on and resyncs the other. */
  sourceId: string;
  /** The union of both records: what the source sends. */
  changed: ChangedRecordWire;
  /** Either record was lost (a restart): offer block sums before data. */
  verify: boolean;
}

/** Who holds the up-to-date copy: the survivor, else the one not out of date, else the leader. */
export function decide(dialler: HelloState, acceptor: HelloState): Decision {
  let sourceId: string;
  if (dialler.survivor !== acceptor.survivor) sourceId = dialler.survivor ? dialler.arrayId : acceptor.arrayId;
  else if (dialler.stale !== acceptor.stale) sourceId = dialler.stale ? acceptor.arrayId : dialler.arrayId;
  else sourceId = acceptor.leaderId;
  const merged = new ChangedBlocks();
  merged.merge(dialler.changed ?? {});
  merged.merge(acceptor.changed ?? {});
  return { sourceId, changed: merged.toWire(), verify: dialler.recordLost === true || acceptor.recordLost === true };
}

/**
 * The NBD face of a pod volume: the BlockDevice the export catalog hands to connections in
 * place of the local volume. Everything goes through the pod; the local volume is untouched for
 * volumes outside pods.
 */
export class PodVolumeDevice implements BlockDevice {
  readonly readOnly = false;

  constructor(
    private readonly pod: Pod,
    readonly volume: string,
    readonly local: BlockDevice,
  ) {}

  get sizeBytes(): number {
    return this.local.sizeBytes;
  }
  get metaContexts(): readonly string[] {
    return this.local.metaContexts;
  }

  submit(request: IoRequest): void {
    this.pod.submit(this.volume, this.local, request);
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<ReadExtent[]> {
    const result = await submitAsync(this, { command: IoCommand.Read, offsetBytes, lengthBytes, data: null, fua: false, noHole: false, fastZero: false });
    return result!.extents;
  }
  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    await submitAsync(this, { command: IoCommand.Write, offsetBytes, lengthBytes: data.length, data, fua: options.fua, noHole: false, fastZero: false });
  }
  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    await submitAsync(this, { command: IoCommand.Trim, offsetBytes, lengthBytes, data: null, fua: options.fua, noHole: false, fastZero: false });
  }
  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    await submitAsync(this, { command: IoCommand.WriteZeroes, offsetBytes, lengthBytes, data: null, fua: options.fua, noHole: options.noHole, fastZero: options.fastZero });
  }
  async flush(): Promise<void> {
    await submitAsync(this, { command: IoCommand.Flush, offsetBytes: 0, lengthBytes: 0, data: null, fua: false, noHole: false, fastZero: false });
  }
  blockStatus(context: string, offsetBytes: number, lengthBytes: number): Promise<StatusExtent[]> {
    if (this.pod.state === 'suspended') return Promise.reject(eio(`pod is suspended on this array (${this.pod.reason})`));
    return this.local.blockStatus(context, offsetBytes, lengthBytes);
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.local.cache(offsetBytes, lengthBytes);
  }
}
