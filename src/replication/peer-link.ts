/**
 * One authenticated TCP connection between two arrays (the "link"), carrying link-protocol frames.
 *
 * Authentication is mutual HMAC-SHA256 challenge-response over a shared secret that both arrays
 * were given (`pstorage serve --replication-secret-file`): the accepting side sends a random
 * nonce; the dialling side answers with its own nonce and HMAC(secret, "client", both nonces,
 * its array id); the accepting side checks it (constant time) and proves itself the same way with
 * the roles swapped. Nothing but the handshake is read before both proofs check out, and a wrong
 * proof closes the connection. The secret never crosses the wire. (The frames after the handshake
 * are not encrypted or signed one by one: the link is meant for a private replication network;
 * TLS on the link is the next step, see README.)
 *
 * Requests carry an `id`; their answer is a `reply` frame with `re: id` and `error` (null or
 * `{code, message}`), delivered to the callback given with the request. When the link closes, every
 * waiting callback is called with an IO error, exactly once. Liveness: each side sends a `ping`
 * every HEARTBEAT_MS; a link that hears nothing for DEAD_AFTER_MS is closed (a killed peer's
 * kernel closes the socket at once; the heartbeat covers a peer that hangs or a cut that drops
 * packets silently).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { StorageError, type StorageErrorCode } from '../common/errors.js';
import { encodeFrame, FrameDecoder, type LinkHeader, type LinkMessage } from './link-protocol.js';

export const HEARTBEAT_MS = 250;
export const DEAD_AFTER_MS = 1500;
const HANDSHAKE_TIMEOUT_MS = 3000;

export type ReplyCallback = (error: StorageError | null, reply: LinkMessage | null) => void;

export interface TcpPeerAddress {
  host: string;
  port: number;
}

function proof(secret: Buffer, role: 'client' | 'server', firstNonce: string, secondNonce: string, arrayId: string): Buffer {
  return createHmac('sha256', secret).update(`pstorage-link|${role}|${firstNonce}|${secondNonce}|${arrayId}`).digest();
}

function proofMatches(expected: Buffer, given: unknown): boolean {
  if (typeof given !== 'string' || !/^[0-9a-f]{64}$/.test(given)) return false;
  return timingSafeEqual(expected, Buffer.from(given, 'hex'));
}

/** An error as it travels in a reply frame, and back. */
export function errorToWire(error: unknown): { code: StorageErrorCode; message: string } {
  if (error instanceof StorageError) return { code: error.code, message: error.message };
  return { code: 'IO', message: error instanceof Error ? error.message : String(error) };
}

export function errorFromWire(wire: unknown): StorageError | null {
  if (wire === null || wire === undefined) return null;
  const { code, message } = wire as { code: StorageErrorCode; message: string };
  return new StorageError(code ?? 'IO', `peer array: ${message ?? 'failed'}`);
}

export class PeerLink {
  /** Called for every frame that is not a reply or a ping. */
  onMessage: (message: LinkMessage) => void = () => undefined;
  /** Called once, when the link is gone (either side closed it, or it went silent). */
  onClose: (reason: string) => void = () => undefined;
  /** Bytes of payload sent (block data), for the figures: how much a copy costs on the link. */
  sentDataBytes = 0;

  private nextId = 1;
  private readonly waiting = new Map<number, ReplyCallback>();
  private closed = false;
  private corked = false;
  private lastHeardMs = Date.now();
  private readonly heartbeat: NodeJS.Timeout;

  private constructor(
    private readonly socket: net.Socket,
    private readonly decoder: FrameDecoder,
    readonly peerArrayId: string,
    pending: LinkMessage[],
  ) {
    socket.setNoDelay(true);
    socket.on('data', (bytes: Buffer) => this.received(bytes));
    socket.on('close', () => this.shut('the peer closed the link'));
    socket.on('error', () => undefined); // 'close' follows
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeardMs > DEAD_AFTER_MS) {
        this.close(`no word from the peer for ${DEAD_AFTER_MS} ms`);
        return;
      }
      this.send({ type: 'ping' });
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
    // Frames that arrived with the end of the handshake are delivered once the owner is attached.
    if (pending.length > 0) setImmediate(() => pending.forEach((message) => this.dispatch(message)));
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Dials `address` and proves both sides know `secret`. */
  static dial(address: TcpPeerAddress, secret: Buffer, arrayId: string): Promise<PeerLink> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: address.host, port: address.port });
      const decoder = new FrameDecoder();
      const clientNonce = randomBytes(16).toString('hex');
      let serverNonce = '';
      const fail = (error: StorageError) => {
        clearTimeout(timer);
        socket.destroy();
        reject(error);
      };
      const timer = setTimeout(() => fail(StorageError.io(`the peer array at ${address.host}:${address.port} did not finish the link handshake within ${HANDSHAKE_TIMEOUT_MS} ms`)), HANDSHAKE_TIMEOUT_MS);
      socket.on('error', (error) => fail(StorageError.io(`cannot reach the peer array at ${address.host}:${address.port}: ${error.message}`, error)));
      const onData = (bytes: Buffer) => {
        let messages: LinkMessage[];
        try {
          messages = decoder.push(bytes);
        } catch (error) {
          fail(error as StorageError);
          return;
        }
        while (messages.length > 0) {
          const { header } = messages.shift()!;
          if (header.type === 'challenge' && serverNonce === '') {
            serverNonce = String(header.nonce);
            const mac = proof(secret, 'client', serverNonce, clientNonce, arrayId).toString('hex');
            for (const piece of encodeFrame({ type: 'auth', nonce: clientNonce, arrayId, mac }, null)) socket.write(piece);
          } else if (header.type === 'auth-ok' && serverNonce !== '') {
            const peerId = String(header.arrayId);
            if (!proofMatches(proof(secret, 'server', clientNonce, serverNonce, peerId), header.mac)) {
              fail(StorageError.io(`the array at ${address.host}:${address.port} does not know the replication secret: check --replication-secret-file on both arrays`));
              return;
            }
            clearTimeout(timer);
            socket.off('data', onData);
            socket.removeAllListeners('error');
            resolve(new PeerLink(socket, decoder, peerId, messages));
            return;
          } else {
            fail(StorageError.io(`the array at ${address.host}:${address.port} refused the link: ${String(header.message ?? header.type)}`));
            return;
          }
        }
      };
      socket.on('data', onData);
    });
  }

  /** Runs the accepting half of the handshake on a fresh connection. */
  static accept(socket: net.Socket, secret: Buffer, arrayId: string): Promise<PeerLink> {
    return new Promise((resolve, reject) => {
      const decoder = new FrameDecoder();
      const serverNonce = randomBytes(16).toString('hex');
      const fail = (message: string) => {
        clearTimeout(timer);
        for (const piece of encodeFrame({ type: 'auth-failed', message }, null)) socket.write(piece);
        socket.end();
        setTimeout(() => socket.destroy(), 100).unref();
        reject(StorageError.io(message));
      };
      const timer = setTimeout(() => fail('link handshake timed out'), HANDSHAKE_TIMEOUT_MS);
      socket.on('error', () => undefined);
      const onData = (bytes: Buffer) => {
        let messages: LinkMessage[];
        try {
          messages = decoder.push(bytes);
        } catch {
          fail('bad link frame');
          return;
        }
        if (messages.length === 0) return;
        const { header } = messages.shift()!;
        const clientId = String(header.arrayId);
        if (header.type !== 'auth' || !proofMatches(proof(secret, 'client', serverNonce, String(header.nonce), clientId), header.mac)) {
          fail('wrong replication secret: give both arrays the same --replication-secret-file');
          return;
        }
        clearTimeout(timer);
        socket.off('data', onData);
        const mac = proof(secret, 'server', String(header.nonce), serverNonce, arrayId).toString('hex');
        for (const piece of encodeFrame({ type: 'auth-ok', arrayId, mac }, null)) socket.write(piece);
        resolve(new PeerLink(socket, decoder, clientId, messages));
      };
      socket.on('data', onData);
      for (const piece of encodeFrame({ type: 'challenge', nonce: serverNonce }, null)) socket.write(piece);
    });
  }

  send(header: LinkHeader, data: Buffer | null = null): void {
    if (this.closed) return;
    if (data !== null) this.sentDataBytes += data.length;
    // Frames sent in one turn go out as one writev (a syscall per frame costs more than the frame).
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    for (const piece of encodeFrame(header, data)) this.socket.write(piece);
  }

  /** Sends a request; `callback` gets the reply, or an IO error if the link closes first. */
  request(header: LinkHeader, data: Buffer | null, callback: ReplyCallback): void {
    if (this.closed) {
      callback(StorageError.io('the link to the peer array is down'), null);
      return;
    }
    const id = this.nextId++;
    this.waiting.set(id, callback);
    this.send({ ...header, id }, data);
  }

  /** `request` as a promise, for the control plane; rejects with the peer's error. */
  ask(header: LinkHeader, data: Buffer | null = null): Promise<LinkMessage> {
    return new Promise((resolve, reject) => {
      this.request(header, data, (error, reply) => {
        if (error !== null) reject(error);
        else {
          const remote = errorFromWire(reply!.header.error);
          if (remote !== null) reject(remote);
          else resolve(reply!);
        }
      });
    });
  }

  /** Answers request `id`. */
  reply(id: unknown, error: unknown, fields: Record<string, unknown> = {}, data: Buffer | null = null): void {
    this.send({ type: 'reply', re: id, error: error === null || error === undefined ? null : errorToWire(error), ...fields }, data);
  }

  close(reason = 'closed'): void {
    if (this.closed) return;
    this.socket.destroy();
    this.shut(reason);
  }

  private received(bytes: Buffer): void {
    this.lastHeardMs = Date.now();
    let messages: LinkMessage[];
    try {
      messages = this.decoder.push(bytes);
    } catch (error) {
      this.close((error as Error).message);
      return;
    }
    for (const message of messages) {
      if (this.closed) return;
      this.dispatch(message);
    }
  }

  private dispatch(message: LinkMessage): void {
    const { header } = message;
    if (header.type === 'ping') return;
    if (header.type === 'reply') {
      const callback = this.waiting.get(header.re as number);
      if (callback === undefined) return;
      this.waiting.delete(header.re as number);
      callback(null, message);
      return;
    }
    this.onMessage(message);
  }

  private shut(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.socket.destroy();
    const callbacks = [...this.waiting.values()];
    this.waiting.clear();
    const error = StorageError.io(`the link to the peer array went down (${reason})`);
    for (const callback of callbacks) callback(error, null);
    this.onClose(reason);
  }
}
