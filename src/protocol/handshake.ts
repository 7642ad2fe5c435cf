/**
 * The NBD fixed-newstyle handshake as a sans-IO state machine: bytes in, actions out.
 *
 * The server layer writes `greeting()` to the socket, then passes every received chunk to
 * `receive()` and carries out the actions it returns, in order: send bytes, close the connection,
 * or enter the transmission phase with the negotiated session (and any bytes that already belong
 * to it). Nothing here touches a socket, a file or a clock.
 *
 * Rules this follows (NBD.md sections 2 and 3):
 * - only FIXED_NEWSTYLE and NO_ZEROES are advertised; a client flag outside those drops the
 *   connection, which is the one hard disconnect the spec asks for;
 * - every option gets exactly one final reply; unknown options get NBD_REP_ERR_UNSUP and the
 *   stream stays in step because the option length is honoured, even for oversized options
 *   (whose data is skipped, not buffered);
 * - EXPORT_NAME cannot carry an error, so an unknown export (or a shutting-down server) closes;
 * - SET_META_CONTEXT replaces earlier contexts even when it fails; contexts set for another export
 *   than the one finally chosen are dropped.
 *
 * TLS (NBD.md section 3, STARTTLS): the mode is the spec's NOTLS (`off`: STARTTLS gets
 * NBD_REP_ERR_POLICY, never TLS_REQD), SELECTIVETLS (`on`: STARTTLS is offered, exports without an
 * access list are served either way) or FORCEDTLS (`require`: before STARTTLS every option but
 * STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, LIST and INFO included, and EXPORT_NAME, which
 * cannot carry an error, closes). STARTTLS answers ACK and emits a `starttls` action; the server
 * performs the TLS handshake on the socket and calls `tlsEstablished(identity)`, which forgets
 * everything negotiated before (structured replies, meta contexts), as the spec requires. A
 * second STARTTLS gets NBD_REP_ERR_INVALID.
 *
 * Access lists: an export whose `accessList` is set is visible only to a TLS client whose identity
 * (client certificate common name, or PSK username) is on it. Everyone else, plain clients
 * included, is told it does not exist (NBD_REP_ERR_UNKNOWN, absent from LIST, EXPORT_NAME closes),
 * as nbdkit's and qemu's tls-authz do; the spec's SELECTIVETLS SHOULD (TLS_REQD for a TLS-only
 * export asked for in plain) is not followed for these, because TLS_REQD would tell a stranger that
 * the export exists.
 */
import { assert } from '../common/assert.js';
import type { ExportCatalog, ExportEntry } from '../common/block-device.js';
import * as C from './constants.js';

/** Option data above this is skipped and answered with NBD_REP_ERR_TOO_BIG. */
export const MAX_OPTION_DATA_BYTES = 64 * 1024;
/** A client that never leaves the handshake is cut off after this many options. */
export const MAX_OPTIONS_PER_HANDSHAKE = 4096;

export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumPayloadBytes: number;
}

/**
 * The largest READ or WRITE accepted, advertised in NBD_INFO_BLOCK_SIZE: 64 MiB, twice the 32 MiB
 * a client that negotiated nothing may assume, because clients send more (nbd-tester-client's
 * integrityhuge mode: 40 MiB; nbdkit and nbd-server accept it) and 64 MiB is libnbd's own limit.
 * A request this size is still inside one connection's in-flight memory bound (nbd-server.ts).
 */
export const DEFAULT_BLOCK_SIZES: BlockSizeConstraints = {
  minimumBytes: 1,
  preferredBytes: 4096,
  maximumPayloadBytes: 64 * 1024 * 1024,
};

/** What the handshake settled, handed to the transmission phase. */
export interface NegotiatedSession {
  exportEntry: ExportEntry;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Selected meta contexts, by the id the client will see in BLOCK_STATUS replies. */
  metaContexts: Map<number, string>;
  blockSizes: BlockSizeConstraints;
}

export type HandshakeAction =
  | { type: 'send'; bytes: Buffer }
  /**
   * Send `reply` (the ACK to STARTTLS) in plain text and, once it is written, run the TLS
   * handshake as the server on the same socket, then call `tlsEstablished`. No bytes may be fed
   * to `receive` until then.
   */
  | { type: 'starttls'; reply: Buffer }
  /** `normal`: the client ended the handshake as the protocol allows (listing or probing exports). */
  | { type: 'close'; reason: string; normal: boolean }
  | { type: 'transmission'; session: NegotiatedSession; leftover: Buffer };

/** The spec's NOTLS, SELECTIVETLS and FORCEDTLS modes. */
export type TlsMode = 'off' | 'on' | 'require';

export interface HandshakeOptions {
  catalog: ExportCatalog;
  /** Default `off`. */
  tlsMode?: TlsMode;
  blockSizes?: BlockSizeConstraints;
  /** True once the server is shutting down: options get NBD_REP_ERR_SHUTDOWN. */
  isShuttingDown?: () => boolean;
}

type Phase = 'client-flags' | 'option-header' | 'option-data' | 'option-skip' | 'tls-handshake' | 'done';

/**
 * Whether a client may see an export: one without an access list is open to everyone; one with a
 * list only to a TLS client whose identity is on it.
 */
export function mayAccess(accessList: readonly string[] | undefined, tlsActive: boolean, identity: string | null): boolean {
  if (accessList === undefined) return true;
  return tlsActive && identity !== null && accessList.includes(identity);
}

export class Handshake {
  private readonly catalog: ExportCatalog;
  private readonly blockSizes: BlockSizeConstraints;
  private readonly isShuttingDown: () => boolean;
  private readonly tlsMode: TlsMode;
  private tlsActive = false;
  /** The TLS client's identity (certificate CN or PSK username), once TLS is up; null otherwise. */
  private identity: string | null = null;
  private readonly input: Buffer[] = [];
  private inputBytes = 0;
  private phase: Phase = 'client-flags';
  private noZeroes = false;
  private structuredReplies = false;
  private metaContexts = new Map<number, string>();
  private metaContextExport: string | null = null;
  private option = 0;
  private optionBytes = 0;
  private skipBytesLeft = 0;
  private optionCount = 0;

  constructor(options: HandshakeOptions) {
    this.catalog = options.catalog;
    this.blockSizes = options.blockSizes ?? DEFAULT_BLOCK_SIZES;
    this.isShuttingDown = options.isShuttingDown ?? (() => false);
    this.tlsMode = options.tlsMode ?? 'off';
  }

  /**
   * The server finished the TLS handshake that a `starttls` action asked for. Everything
   * negotiated in plain text is forgotten (the spec's MUST), and options are read again.
   */
  tlsEstablished(identity: string | null): void {
    assert(this.phase === 'tls-handshake', 'tlsEstablished without a pending STARTTLS');
    this.tlsActive = true;
    this.identity = identity;
    this.structuredReplies = false;
    this.metaContexts = new Map();
    this.metaContextExport = null;
    this.phase = 'option-header';
  }

  greeting(): Buffer {
    const out = Buffer.alloc(18);
    out.writeBigUInt64BE(C.NBDMAGIC, 0);
    out.writeBigUInt64BE(C.IHAVEOPT, 8);
    out.writeUInt16BE(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES, 16);
    return out;
  }

  get finished(): boolean {
    return this.phase === 'done';
  }

  receive(chunk: Buffer): HandshakeAction[] {
    assert(this.phase !== 'done', 'handshake received bytes after it finished');
    assert(this.phase !== 'tls-handshake', 'handshake received bytes while the TLS handshake runs');
    if (chunk.length > 0) {
      this.input.push(chunk);
      this.inputBytes += chunk.length;
    }
    const actions: HandshakeAction[] = [];
    while (!this.finished && this.step(actions)) {
      // Each step consumes input or changes phase; it returns false when it needs more bytes.
    }
    return actions;
  }

  private take(n: number): Buffer {
    const all = this.input.length === 1 ? this.input[0]! : Buffer.concat(this.input, this.inputBytes);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.input.length = 0;
    this.inputBytes = rest.length;
    if (rest.length > 0) this.input.push(rest);
    return head;
  }

  private step(actions: HandshakeAction[]): boolean {
    switch (this.phase) {
      case 'client-flags':
        return this.readClientFlags(actions);
      case 'option-header':
        return this.readOptionHeader(actions);
      case 'option-data':
        return this.readOptionData(actions);
      case 'option-skip':
        return this.skipOptionData(actions);
      case 'tls-handshake':
      case 'done':
        return false;
    }
  }

  private readClientFlags(actions: HandshakeAction[]): boolean {
    if (this.inputBytes < 4) return false;
    const flags = this.take(4).readUInt32BE(0);
    const known = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES;
    if ((flags & ~known) !== 0) {
      this.finish(actions, `client sent unknown handshake flags 0x${flags.toString(16)}`);
      return false;
    }
    this.noZeroes = (flags & C.NBD_FLAG_C_NO_ZEROES) !== 0;
    this.phase = 'option-header';
    return true;
  }

  private readOptionHeader(actions: HandshakeAction[]): boolean {
    if (this.inputBytes < C.OPTION_HEADER_BYTES) return false;
    const header = this.take(C.OPTION_HEADER_BYTES);
    if (header.readBigUInt64BE(0) !== C.IHAVEOPT) {
      this.finish(actions, 'client sent an option without the IHAVEOPT magic');
      return false;
    }
    this.optionCount += 1;
    if (this.optionCount > MAX_OPTIONS_PER_HANDSHAKE) {
      this.finish(actions, `client sent more than ${MAX_OPTIONS_PER_HANDSHAKE} options`);
      return false;
    }
    this.option = header.readUInt32BE(8);
    this.optionBytes = header.readUInt32BE(12);
    if (this.optionBytes > MAX_OPTION_DATA_BYTES) {
      this.skipBytesLeft = this.optionBytes;
      this.phase = 'option-skip';
    } else {
      this.phase = 'option-data';
    }
    return true;
  }

  private skipOptionData(actions: HandshakeAction[]): boolean {
    const count = Math.min(this.skipBytesLeft, this.inputBytes);
    this.take(count);
    this.skipBytesLeft -= count;
    if (this.skipBytesLeft > 0) return false;
    this.phase = 'option-header';
    if (this.option === C.NBD_OPT_EXPORT_NAME) {
      this.finish(actions, 'EXPORT_NAME option too large');
      return false;
    }
    const known = C.OPTION_NAMES[this.option] !== undefined;
    const type = known ? C.NBD_REP_ERR_TOO_BIG : C.NBD_REP_ERR_UNSUP;
    actions.push(this.send(this.optionReply(type, errorText(`option data of ${this.optionBytes} bytes is too large`))));
    return true;
  }

  private readOptionData(actions: HandshakeAction[]): boolean {
    if (this.inputBytes < this.optionBytes) return false;
    const data = this.take(this.optionBytes);
    this.phase = 'option-header';
    this.handleOption(this.option, data, actions);
    return !this.finished;
  }

  private handleOption(option: number, data: Buffer, actions: HandshakeAction[]): void {
    if (option === C.NBD_OPT_ABORT) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ACK)));
      this.finish(actions, 'client ended the handshake without attaching (NBD_OPT_ABORT, as after listing exports)', true);
      return;
    }
    if (this.isShuttingDown()) {
      if (option === C.NBD_OPT_EXPORT_NAME) {
        this.finish(actions, 'server is shutting down');
        return;
      }
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_SHUTDOWN, errorText('server is shutting down'))));
      return;
    }
    if (option === C.NBD_OPT_STARTTLS) return this.handleStartTls(data, actions);
    if (this.tlsMode === 'require' && !this.tlsActive) {
      if (option === C.NBD_OPT_EXPORT_NAME) {
        this.finish(actions, 'EXPORT_NAME before STARTTLS, and this server requires TLS');
        return;
      }
      const name = C.OPTION_NAMES[option] ?? `option ${option}`;
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_TLS_REQD, errorText(`this server requires TLS: send NBD_OPT_STARTTLS before ${name}`))));
      return;
    }
    switch (option) {
      case C.NBD_OPT_EXPORT_NAME:
        return this.handleExportName(data, actions);
      case C.NBD_OPT_LIST:
        return this.handleList(data, actions);
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO:
        return this.handleInfoOrGo(option, data, actions);
      case C.NBD_OPT_STRUCTURED_REPLY:
        return this.handleStructuredReply(data, actions);
      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT:
        return this.handleMetaContext(option, data, actions);
      default: {
        const name = C.OPTION_NAMES[option] ?? `option ${option}`;
        actions.push(this.send(this.optionReply(C.NBD_REP_ERR_UNSUP, errorText(`${name} is not supported`))));
      }
    }
  }

  private handleStartTls(data: Buffer, actions: HandshakeAction[]): void {
    if (this.tlsMode === 'off') {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_POLICY, errorText('TLS is not enabled on this server (pstorage serve --tls on|require)'))));
      return;
    }
    if (data.length !== 0) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('STARTTLS takes no data'))));
      return;
    }
    if (this.tlsActive) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('TLS is already established on this connection'))));
      return;
    }
    if (this.inputBytes > 0) {
      // The client must wait for our ACK before its TLS ClientHello; bytes already here would be
      // plain text that the TLS layer never sees, so the stream cannot be kept in step.
      this.finish(actions, 'client sent data after STARTTLS before reading the reply');
      return;
    }
    this.phase = 'tls-handshake';
    actions.push({ type: 'starttls', reply: this.optionReply(C.NBD_REP_ACK) });
  }

  /** The export `name` if this client may see it (see `mayAccess`); undefined otherwise. */
  private lookupVisible(name: string): ExportEntry | undefined {
    const entry = this.catalog.lookup(name);
    if (entry === undefined || !mayAccess(entry.accessList, this.tlsActive, this.identity)) return undefined;
    return entry;
  }

  private handleExportName(data: Buffer, actions: HandshakeAction[]): void {
    const name = decodeString(data);
    const entry = name === null ? undefined : this.lookupVisible(name);
    if (entry === undefined) {
      this.finish(actions, `EXPORT_NAME for unknown export ${JSON.stringify(name ?? '<invalid utf-8>')}`);
      return;
    }
    const flags = this.transmissionFlags(entry);
    const reply = Buffer.alloc(10 + (this.noZeroes ? 0 : 124));
    reply.writeBigUInt64BE(BigInt(entry.device.sizeBytes), 0);
    reply.writeUInt16BE(flags, 8);
    actions.push(this.send(reply));
    this.enterTransmission(entry, flags, actions);
  }

  private handleList(data: Buffer, actions: HandshakeAction[]): void {
    if (data.length !== 0) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('LIST takes no data'))));
      return;
    }
    for (const { name, description, accessList } of this.catalog.list()) {
      if (!mayAccess(accessList, this.tlsActive, this.identity)) continue;
      const nameBytes = Buffer.from(name, 'utf8');
      const body = Buffer.concat([u32(nameBytes.length), nameBytes, Buffer.from(description, 'utf8')]);
      actions.push(this.send(this.optionReply(C.NBD_REP_SERVER, body)));
    }
    actions.push(this.send(this.optionReply(C.NBD_REP_ACK)));
  }

  private handleInfoOrGo(option: number, data: Buffer, actions: HandshakeAction[]): void {
    const request = parseInfoRequest(data);
    if (request === null) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('malformed INFO/GO request'))));
      return;
    }
    const entry = this.lookupVisible(request.name);
    if (entry === undefined) {
      const message = `export ${JSON.stringify(request.name)} does not exist; list them with NBD_OPT_LIST (nbdinfo --list)`;
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_UNKNOWN, errorText(message))));
      return;
    }
    const flags = this.transmissionFlags(entry);
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(C.NBD_INFO_EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(entry.device.sizeBytes), 2);
    exportInfo.writeUInt16BE(flags, 10);
    actions.push(this.send(this.optionReply(C.NBD_REP_INFO, exportInfo)));
    for (const info of new Set(request.infos)) {
      const body = this.infoReply(info, entry);
      if (body !== null) actions.push(this.send(this.optionReply(C.NBD_REP_INFO, body)));
    }
    actions.push(this.send(this.optionReply(C.NBD_REP_ACK)));
    if (option === C.NBD_OPT_GO) this.enterTransmission(entry, flags, actions);
  }

  /** The body of one NBD_REP_INFO reply, or null for info types we do not know (ignored). */
  private infoReply(info: number, entry: ExportEntry): Buffer | null {
    switch (info) {
      case C.NBD_INFO_NAME:
        return Buffer.concat([u16(C.NBD_INFO_NAME), Buffer.from(entry.name, 'utf8')]);
      case C.NBD_INFO_DESCRIPTION:
        return Buffer.concat([u16(C.NBD_INFO_DESCRIPTION), Buffer.from(entry.description, 'utf8')]);
      case C.NBD_INFO_BLOCK_SIZE: {
        const body = Buffer.alloc(14);
        body.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 0);
        body.writeUInt32BE(this.blockSizes.minimumBytes, 2);
        body.writeUInt32BE(this.blockSizes.preferredBytes, 6);
        body.writeUInt32BE(this.blockSizes.maximumPayloadBytes, 10);
        return body;
      }
      default:
        return null;
    }
  }

  private handleStructuredReply(data: Buffer, actions: HandshakeAction[]): void {
    if (data.length !== 0) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('STRUCTURED_REPLY takes no data'))));
      return;
    }
    if (this.structuredReplies) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('structured replies already negotiated'))));
      return;
    }
    this.structuredReplies = true;
    actions.push(this.send(this.optionReply(C.NBD_REP_ACK)));
  }

  private handleMetaContext(option: number, data: Buffer, actions: HandshakeAction[]): void {
    const isSet = option === C.NBD_OPT_SET_META_CONTEXT;
    if (isSet) {
      // SET replaces earlier contexts even when it fails.
      this.metaContexts = new Map();
      this.metaContextExport = null;
    }
    const request = parseMetaContextRequest(data);
    if (request === null) {
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText('malformed meta context request'))));
      return;
    }
    if (isSet && !this.structuredReplies) {
      const message = 'SET_META_CONTEXT needs structured replies: send NBD_OPT_STRUCTURED_REPLY first';
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_INVALID, errorText(message))));
      return;
    }
    const entry = this.lookupVisible(request.exportName);
    if (entry === undefined) {
      const message = `export ${JSON.stringify(request.exportName)} does not exist`;
      actions.push(this.send(this.optionReply(C.NBD_REP_ERR_UNKNOWN, errorText(message))));
      return;
    }
    const available = entry.device.metaContexts;
    const chosen = isSet
      ? available.filter((name) => request.queries.includes(name))
      : selectForList(available, request.queries);
    chosen.forEach((name, index) => {
      const id = isSet ? index + 1 : 0;
      if (isSet) this.metaContexts.set(id, name);
      actions.push(this.send(this.optionReply(C.NBD_REP_META_CONTEXT, Buffer.concat([u32(id), Buffer.from(name, 'utf8')]))));
    });
    if (isSet) this.metaContextExport = entry.name;
    actions.push(this.send(this.optionReply(C.NBD_REP_ACK)));
  }

  private transmissionFlags(entry: ExportEntry): number {
    let flags = C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_FUA | C.NBD_FLAG_CAN_MULTI_CONN | C.NBD_FLAG_SEND_CACHE;
    if (entry.device.readOnly) {
      flags |= C.NBD_FLAG_READ_ONLY;
    } else {
      flags |= C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FAST_ZERO;
    }
    if (this.structuredReplies) flags |= C.NBD_FLAG_SEND_DF;
    return flags;
  }

  private enterTransmission(entry: ExportEntry, flags: number, actions: HandshakeAction[]): void {
    const metaContexts = this.metaContextExport === entry.name ? this.metaContexts : new Map<number, string>();
    const leftover = this.take(this.inputBytes);
    this.phase = 'done';
    actions.push({
      type: 'transmission',
      session: { exportEntry: entry, transmissionFlags: flags, structuredReplies: this.structuredReplies, metaContexts, blockSizes: this.blockSizes },
      leftover,
    });
  }

  private finish(actions: HandshakeAction[], reason: string, normal = false): void {
    this.phase = 'done';
    actions.push({ type: 'close', reason, normal });
  }

  private send(bytes: Buffer): HandshakeAction {
    return { type: 'send', bytes };
  }

  private optionReply(type: number, data: Buffer = Buffer.alloc(0)): Buffer {
    const header = Buffer.alloc(20);
    header.writeBigUInt64BE(C.NBD_OPT_REPLY_MAGIC, 0);
    header.writeUInt32BE(this.option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(data.length, 16);
    return Buffer.concat([header, data]);
  }
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value, 0);
  return out;
}

function errorText(message: string): Buffer {
  return Buffer.from(message, 'utf8');
}

/** Decodes a protocol string: valid UTF-8, no NUL, at most 4096 bytes; null otherwise. */
export function decodeString(bytes: Buffer): string | null {
  if (bytes.length > C.NBD_MAX_STRING_BYTES || bytes.includes(0)) return null;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

interface InfoRequest {
  name: string;
  infos: number[];
}

function parseInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return null;
  const name = decodeString(data.subarray(4, 4 + nameBytes));
  const count = data.readUInt16BE(4 + nameBytes);
  if (name === null || data.length !== 6 + nameBytes + 2 * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name, infos };
}

interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

function parseMetaContextRequest(data: Buffer): MetaContextRequest | null {
  if (data.length < 8) return null;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return null;
  const exportName = decodeString(data.subarray(4, 4 + nameBytes));
  const count = data.readUInt32BE(4 + nameBytes);
  let at = 8 + nameBytes;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return null;
    const queryBytes = data.readUInt32BE(at);
    at += 4;
    if (queryBytes > data.length - at) return null;
    const query = decodeString(data.subarray(at, at + queryBytes));
    if (query === null) return null;
    queries.push(query);
    at += queryBytes;
  }
  if (exportName === null || at !== data.length) return null;
  return { exportName, queries };
}

/** LIST_META_CONTEXT: no query lists everything; `ns:` lists a whole namespace. */
function selectForList(available: readonly string[], queries: string[]): string[] {
  if (queries.length === 0) return [...available];
  return available.filter((name) =>
    queries.some((query) => query === name || (query.endsWith(':') && name.startsWith(query))),
  );
}
