/**
 * The checker of the crash test: from the state of the region before a cycle (what was read back
 * after the previous restart) and the cycle's journal, it lists the states each logical block may
 * be in after the crash, then compares what the restarted server returns.
 *
 * The rule (DESIGN.md, "Durability contract"). For one logical block, the mutations of a cycle
 * form a chain S0 → S1 → … → Sn (the workload never has two mutations of one block in flight, so
 * the server applied them in issue order; S0 is the state before the cycle). Mutation k is
 * *covered* when it was replied to with success and either carried FUA or its reply came before
 * the client issued a FLUSH that was then replied to (on any connection: the export advertises
 * multi-conn, and the design promises FLUSH covers every connection). With c the last covered
 * mutation (0 if none), the block must read as one of Sc … Sn: exactly Sc if nothing after it
 * was issued; never an older state (a lost acknowledged-and-flushed write), never a mix of
 * sectors that no Si has (a torn block), never another block's bytes or garbage.
 *
 * Requests still in flight at the kill, and ones failed with ENOTCONN by libnbd because the
 * server died, count as issued but not acknowledged: they may or may not have been applied.
 * Any other error reply is a failure by itself (the workload never asks for anything invalid).
 *
 * The journal (written by crash_workload.py, one record a line, in the order the client saw
 * things): `S seed cycle regionBlocks`, `W id conn kind fua offset length [key]`, `F id conn`, `A id`,
 * `E id errno`, `X reason`. See that file for the kinds.
 */
import {
  LBA_BYTES,
  SECTOR_BYTES,
  SECTORS_PER_LBA,
  ZERO_SECTOR,
  classifySector,
  dataDescriptor,
  formatState,
  formatVersion,
  patternDescriptor,
  sharedDescriptor,
  versionOf,
} from './crash-content.js';

export type MutationKind = 'D' | 'P' | 'S' | 'Z' | 'N' | 'T';

export interface JournalRequest {
  cycle: number;
  id: number;
  conn: number;
  kind: MutationKind | 'F';
  fua: boolean;
  offsetBytes: number;
  lengthBytes: number;
  /** S only: the pool key of the first block (the next blocks take the next keys). */
  sharedKey: number;
  issuedAt: number;
  repliedAt: number | null;
  errno: number | null;
}

export interface Journal {
  seed: number;
  cycle: number;
  regionBlocks: number;
  requests: JournalRequest[];
  stopReason: string | null;
}

/** errno values libnbd gives requests that die with the connection, and ESHUTDOWN (clean stop). */
const CONNECTION_LOST_ERRNOS = new Set([32 /* EPIPE */, 104 /* ECONNRESET */, 107 /* ENOTCONN */, 108 /* ESHUTDOWN */]);

export function parseJournal(text: string): Journal {
  const lines = text.split('\n');
  const header = lines[0]?.split(' ') ?? [];
  if (header[0] !== 'S' || header.length !== 4) throw new Error(`journal does not start with an S record: ${JSON.stringify(lines[0])}`);
  const journal: Journal = { seed: Number(header[1]), cycle: Number(header[2]), regionBlocks: Number(header[3]), requests: [], stopReason: null };
  const byId = new Map<number, JournalRequest>();
  lines.forEach((line, at) => {
    if (at === 0 || line === '') return;
    const words = line.split(' ');
    const id = Number(words[1]);
    switch (words[0]) {
      case 'W':
      case 'F': {
        const request: JournalRequest = {
          cycle: journal.cycle,
          id,
          conn: Number(words[2]),
          kind: words[0] === 'F' ? 'F' : (words[3] as MutationKind),
          fua: words[4] === '1',
          offsetBytes: words[0] === 'F' ? 0 : Number(words[5]),
          lengthBytes: words[0] === 'F' ? 0 : Number(words[6]),
          sharedKey: words[3] === 'S' ? Number(words[7]) : 0,
          issuedAt: at,
          repliedAt: null,
          errno: null,
        };
        if (byId.has(id)) throw new Error(`journal line ${at + 1}: request ${id} issued twice`);
        byId.set(id, request);
        journal.requests.push(request);
        return;
      }
      case 'A':
      case 'E': {
        const request = byId.get(id);
        if (request === undefined || request.repliedAt !== null) throw new Error(`journal line ${at + 1}: reply to unknown or already answered request ${id}`);
        request.repliedAt = at;
        request.errno = words[0] === 'A' ? 0 : Number(words[2]);
        return;
      }
      case 'X':
        journal.stopReason = words.slice(1).join(' ');
        return;
      default:
        throw new Error(`journal line ${at + 1}: unknown record ${JSON.stringify(line)}`);
    }
  });
  return journal;
}

export interface CycleSummary {
  issued: number;
  acked: number;
  flushesAcked: number;
  fuaAcked: number;
  /** Error replies that are not the connection dying: each one is a failure. */
  serverErrors: string[];
}

export function summarise(journal: Journal): CycleSummary {
  const summary: CycleSummary = { issued: 0, acked: 0, flushesAcked: 0, fuaAcked: 0, serverErrors: [] };
  for (const request of journal.requests) {
    const ok = request.errno === 0;
    if (request.kind === 'F') summary.flushesAcked += ok ? 1 : 0;
    else {
      summary.issued += 1;
      summary.acked += ok ? 1 : 0;
      summary.fuaAcked += ok && request.fua ? 1 : 0;
    }
    if (request.errno !== null && request.errno !== 0 && !CONNECTION_LOST_ERRNOS.has(request.errno)) {
      summary.serverErrors.push(`request ${request.id} (${request.kind} ${request.offsetBytes}+${request.lengthBytes}) failed with errno ${request.errno}`);
    }
  }
  return summary;
}

/** One candidate state of a block, and the request that produced it (null: the cycle's start). */
interface Candidate {
  state: number[];
  by: JournalRequest | null;
}

export interface BlockExpectation {
  lba: number;
  /** Every state of the chain S0 … Sn. */
  chain: Candidate[];
  /** Index in `chain` of the last covered state; allowed states are chain[covered…]. */
  covered: number;
}

export interface Violation {
  lba: number;
  message: string;
}

export interface VerifyResult {
  violations: Violation[];
  /** Blocks that had to read exactly one state, and those with a choice. */
  exactBlocks: number;
  inDoubtBlocks: number;
  /** Of the blocks in doubt, how many read their newest issued state. */
  inDoubtNewest: number;
}

/**
 * The region's known state between cycles. `baseline[lba]` is what the block read as after the
 * last restart (all zeroes for a new array).
 */
export class RegionModel {
  readonly baseline: number[][];

  constructor(
    readonly seed: number,
    readonly regionBlocks: number,
  ) {
    this.baseline = Array.from({ length: regionBlocks }, () => new Array<number>(SECTORS_PER_LBA).fill(ZERO_SECTOR));
  }

  /**
   * The allowed states of every block after a cycle described by `journal`. With `allAckedDurable`
   * (a clean shutdown, which flushes) every acknowledged mutation counts as covered.
   */
  expectations(journal: Journal, options: { allAckedDurable?: boolean } = {}): BlockExpectation[] {
    if (journal.seed !== this.seed || journal.regionBlocks !== this.regionBlocks) throw new Error('journal is from another run');
    let lastFlushIssuedAt = -1;
    for (const request of journal.requests) {
      if (request.kind === 'F' && request.errno === 0) lastFlushIssuedAt = Math.max(lastFlushIssuedAt, request.issuedAt);
    }
    const isCovered = (request: JournalRequest): boolean =>
      request.errno === 0 && (options.allAckedDurable === true || request.fua || request.repliedAt! < lastFlushIssuedAt);
    const blocks: BlockExpectation[] = this.baseline.map((state, lba) => ({ lba, chain: [{ state, by: null }], covered: 0 }));
    for (const request of journal.requests) {
      if (request.kind === 'F') continue;
      const firstLba = Math.floor(request.offsetBytes / LBA_BYTES);
      const lastLba = Math.floor((request.offsetBytes + request.lengthBytes - 1) / LBA_BYTES);
      for (let lba = firstLba; lba <= lastLba; lba++) {
        const block = blocks[lba];
        if (block === undefined) throw new Error(`request ${request.id} writes lba ${lba}, outside the region`);
        const next = applyMutation(block.chain[block.chain.length - 1]!.state, lba, request, journal.cycle);
        block.chain.push({ state: next, by: request });
        if (isCovered(request)) block.covered = block.chain.length - 1;
      }
    }
    return blocks;
  }

  /** Checks `image` (the region read back) against `expectations`. */
  verify(image: Buffer, expectations: BlockExpectation[]): VerifyResult {
    if (image.length !== this.regionBlocks * LBA_BYTES) throw new Error(`region image is ${image.length} bytes, expected ${this.regionBlocks * LBA_BYTES}`);
    const result: VerifyResult = { violations: [], exactBlocks: 0, inDoubtBlocks: 0, inDoubtNewest: 0 };
    for (const block of expectations) {
      const observed = this.readBlock(image, block.lba, result.violations);
      if (observed === null) continue;
      const key = observed.join(',');
      const allowed = block.chain.slice(block.covered);
      const match = allowed.findIndex((candidate) => candidate.state.join(',') === key);
      if (allowed.length === 1) result.exactBlocks += 1;
      else result.inDoubtBlocks += 1;
      if (match === allowed.length - 1 && allowed.length > 1) result.inDoubtNewest += 1;
      if (match < 0) result.violations.push({ lba: block.lba, message: explainMismatch(block, observed) });
    }
    return result;
  }

  /** After a successful check, what was read becomes the state before the next cycle. */
  adopt(image: Buffer): void {
    for (let lba = 0; lba < this.regionBlocks; lba++) {
      const state = this.readBlock(image, lba, []);
      if (state === null) throw new Error(`adopt: lba ${lba} does not classify`);
      this.baseline[lba] = state;
    }
  }

  /** The 8 sector descriptors of a block, or null (with violations added) if a sector is bad. */
  private readBlock(image: Buffer, lba: number, violations: Violation[]): number[] | null {
    const state: number[] = [];
    const problems: string[] = [];
    for (let sector = 0; sector < SECTORS_PER_LBA; sector++) {
      const at = lba * LBA_BYTES + sector * SECTOR_BYTES;
      const reading = classifySector(image.subarray(at, at + SECTOR_BYTES), this.seed, lba, sector);
      if (reading.type === 'ok') state.push(reading.descriptor);
      else if (reading.type === 'foreign') problems.push(`sector ${sector} holds another block's data: lba ${reading.lba} sector ${reading.sector}, ${formatState([reading.descriptor])}`);
      else problems.push(`sector ${sector} holds ${reading.why}`);
    }
    if (problems.length === 0) return state;
    violations.push({ lba, message: problems.join('; ') });
    return null;
  }
}

/** The state of a block after `request` is applied to `state`. */
export function applyMutation(state: readonly number[], lba: number, request: JournalRequest, cycle: number): number[] {
  const version = versionOf(cycle, request.id);
  const next = [...state];
  const blockStart = lba * LBA_BYTES;
  const from = Math.max(request.offsetBytes, blockStart);
  const to = Math.min(request.offsetBytes + request.lengthBytes, blockStart + LBA_BYTES);
  const whole = from === blockStart && to === blockStart + LBA_BYTES;
  if (request.kind === 'S' && !whole) throw new Error(`shared write ${request.id} does not cover whole logical blocks`);
  for (let sector = (from - blockStart) / SECTOR_BYTES; sector < (to - blockStart) / SECTOR_BYTES; sector++) {
    switch (request.kind) {
      case 'D':
        next[sector] = dataDescriptor(version);
        break;
      case 'P':
        next[sector] = patternDescriptor(version);
        break;
      case 'S':
        next[sector] = sharedDescriptor(request.sharedKey + lba - Math.floor(request.offsetBytes / LBA_BYTES));
        break;
      case 'Z':
      case 'N':
        next[sector] = ZERO_SECTOR;
        break;
      case 'T':
        // TRIM is a hint: the engine unmaps whole logical blocks only (which then read as
        // zeroes) and leaves partly covered ones alone. The workload trims whole blocks only.
        if (whole) next[sector] = ZERO_SECTOR;
        break;
      default:
        throw new Error(`not a mutation: ${request.kind}`);
    }
  }
  return next;
}

function describeRequest(request: JournalRequest | null): string {
  if (request === null) return 'the state before this cycle';
  const reply = request.errno === null ? 'never replied to' : request.errno === 0 ? 'acknowledged' : `failed (errno ${request.errno})`;
  return `request ${formatVersion(versionOf(request.cycle, request.id))} (${request.kind}${request.fua ? '+FUA' : ''} ${request.offsetBytes}+${request.lengthBytes}, conn ${request.conn}, ${reply})`;
}

function explainMismatch(block: BlockExpectation, observed: number[]): string {
  const key = observed.join(',');
  const older = block.chain.slice(0, block.covered).findIndex((candidate) => candidate.state.join(',') === key);
  const covering = block.chain[block.covered]!;
  const head = `reads [${formatState(observed)}]`;
  if (older >= 0) {
    return `${head}, the state after ${describeRequest(block.chain[older]!.by)}: the durable write ${describeRequest(covering.by)} was lost (it must read [${formatState(covering.state)}])`;
  }
  const allowed = block.chain.slice(block.covered).map((candidate) => `[${formatState(candidate.state)}] after ${describeRequest(candidate.by)}`);
  return `${head}, which no sequence of its writes produces (torn or mixed); allowed: ${allowed.join(' | ')}`;
}
