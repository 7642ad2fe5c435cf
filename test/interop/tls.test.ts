/**
 * NBD over TLS (NBD_OPT_STARTTLS) and per-volume access lists, against a real pstorage process
 * with real clients: libnbd's nbdinfo and nbdcopy (GnuTLS), qemu-img and qemu-io (GnuTLS, through
 * tls-creds-x509), and a raw socket client written here for the STARTTLS edge cases.
 *
 * The PKI is made once per run with certtool (Debian gnutls-bin): a CA, a server certificate for
 * 127.0.0.1, client certificates with the common names alice and bob, a client certificate
 * "alice" from a second, foreign CA, and a psktool file for alice (and one with a wrong key).
 * Each client directory holds ca-cert.pem, client-cert.pem and client-key.pem, the layout libnbd
 * (`tls-certificates=DIR`) and qemu (`tls-creds-x509,dir=DIR`) read.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import * as C from '../../src/protocol/constants.js';
import { cleanupOnExit, describeRun, MiB, mustRun, requireTools, run, seededBytes, sha256, sha256File, startServer, stopServer, tempDir, waitFor, type RunResult } from '../helpers/interop.js';
import { makeTempDir, PSTORAGE_BIN, type PstorageProcess } from '../helpers/pstorage-process.js';

interface Pki {
  /** Server credentials: ca-cert.pem, server-cert.pem, server-key.pem. */
  server: string;
  alice: string;
  bob: string;
  /** alice's common name, signed by another CA (its ca-cert.pem is ours, so it trusts the server). */
  foreign: string;
  /** Only ca-cert.pem: a TLS client without a certificate. */
  anonymous: string;
  pskFile: string;
  wrongPskFile: string;
}

function certtool(args: string[], template?: { dir: string; name: string; text: string }): Promise<RunResult> {
  if (template !== undefined) {
    const file = path.join(template.dir, `${template.name}.info`);
    fs.writeFileSync(file, template.text);
    args = [...args, '--template', file];
  }
  return mustRun('certtool', args);
}

async function privateKey(file: string): Promise<void> {
  fs.writeFileSync(file, (await certtool(['--generate-privkey', '--key-type=ecdsa'])).stdout);
}

async function makeCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const key = path.join(dir, `${name}-key.pem`);
  const cert = path.join(dir, `${name}-cert.pem`);
  await privateKey(key);
  await certtool(['--generate-self-signed', '--load-privkey', key, '--outfile', cert], { dir, name, text: `cn = pstorage test ${name}\nca\ncert_signing_key\nexpiration_days = 2\n` });
  return { cert, key };
}

async function signed(dir: string, ca: { cert: string; key: string }, name: string, certFile: string, keyFile: string, extra: string): Promise<void> {
  await privateKey(keyFile);
  const text = `cn = ${name}\n${extra}encryption_key\nsigning_key\nexpiration_days = 2\n`;
  await certtool(['--generate-certificate', '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key, '--load-privkey', keyFile, '--outfile', certFile], { dir, name: `${name}-${path.basename(path.dirname(certFile))}`, text });
}

async function clientDir(root: string, name: string, ca: { cert: string; key: string }, trusted: string): Promise<string> {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  fs.copyFileSync(trusted, path.join(dir, 'ca-cert.pem'));
  await signed(root, ca, name === 'foreign' ? 'alice' : name, path.join(dir, 'client-cert.pem'), path.join(dir, 'client-key.pem'), 'tls_www_client\n');
  return dir;
}

async function makePki(): Promise<Pki> {
  const root = makeTempDir('pstorage-tls-pki-');
  cleanupOnExit(() => fs.rmSync(root, { recursive: true, force: true }));
  const ca = await makeCa(root, 'ca');
  const otherCa = await makeCa(root, 'other-ca');
  const server = path.join(root, 'server');
  fs.mkdirSync(server);
  fs.copyFileSync(ca.cert, path.join(server, 'ca-cert.pem'));
  await signed(root, ca, 'localhost', path.join(server, 'server-cert.pem'), path.join(server, 'server-key.pem'), 'dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n');
  const [alice, bob, foreign] = await Promise.all([clientDir(root, 'alice', ca, ca.cert), clientDir(root, 'bob', ca, ca.cert), clientDir(root, 'foreign', otherCa, ca.cert)]);
  const anonymous = path.join(root, 'anonymous');
  fs.mkdirSync(anonymous);
  fs.copyFileSync(ca.cert, path.join(anonymous, 'ca-cert.pem'));
  const pskFile = path.join(root, 'keys.psk');
  await mustRun('psktool', ['-u', 'alice', '-p', pskFile]);
  const wrongPskFile = path.join(root, 'wrong.psk');
  await mustRun('psktool', ['-u', 'alice', '-p', wrongPskFile]);
  return { server, alice: alice!, bob: bob!, foreign: foreign!, anonymous, pskFile, wrongPskFile };
}

let pkiPromise: Promise<Pki> | null = null;
function pki(): Promise<Pki> {
  requireTools(['certtool', 'psktool', 'nbdinfo']);
  pkiPromise ??= makePki();
  return pkiPromise;
}

const certUri = (port: number, exportName: string, dir: string) => `nbds://127.0.0.1:${port}/${exportName}?tls-certificates=${dir}`;
const pskUri = (port: number, exportName: string, file: string) => `nbds://alice@127.0.0.1:${port}/${exportName}?tls-psk-file=${file}`;

async function tlsServer(t: ExecutionContext, args: string[], dataDir?: string): Promise<PstorageProcess & { port: number }> {
  const server = await startServer(t, { tcp: true, args, dataDir });
  return server as PstorageProcess & { port: number };
}

/** The CLI against the running server (through its management socket). */
function cli(server: PstorageProcess, args: string[]): Promise<RunResult> {
  return mustRun(process.execPath, [PSTORAGE_BIN, ...args, '--data-dir', server.dataDir]);
}

async function nbdinfoSize(uri: string): Promise<RunResult> {
  return run('nbdinfo', ['--size', uri], { timeoutMs: 20_000 });
}

/** Names listed by `nbdinfo --list --json`, or the failed run. */
async function listed(uri: string): Promise<string[]> {
  const result = await mustRun('nbdinfo', ['--list', '--json', uri], { timeoutMs: 20_000 });
  return (JSON.parse(result.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((entry) => entry['export-name']).sort();
}

function qemuArgs(port: number, dir: string, exportName: string): string[] {
  return ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${dir}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=${exportName},tls-creds=tls0`];
}

test('certificates with --tls require --tls-verify-peer: nbdinfo, nbdcopy, qemu-img and qemu-io work; plain, foreign-CA and certificate-less clients are refused, and others are served after them', async (t) => {
  requireTools(['nbdcopy', 'qemu-img', 'qemu-io']);
  const keys = await pki();
  const dir = tempDir(t);
  const server = await tlsServer(t, ['--tls', 'require', '--tls-certificates', keys.server, '--tls-verify-peer']);
  await cli(server, ['volume', 'create', 'small', '--size', '8M']);

  const info = await mustRun('nbdinfo', ['--json', certUri(server.port, 'default', keys.alice)]);
  t.regex(info.stdout, /"protocol": "newstyle-fixed"/);
  t.regex(info.stdout, /"TLS": true/);

  const plain = await nbdinfoSize(`nbd://127.0.0.1:${server.port}/default`);
  t.not(plain.code, 0, describeRun(plain));
  t.regex(plain.stderr, /requires TLS/i, describeRun(plain));
  const plainList = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${server.port}/`], { timeoutMs: 20_000 });
  t.not(plainList.code, 0, 'LIST is refused before STARTTLS too');
  for (const refused of [keys.foreign, keys.anonymous]) {
    const result = await nbdinfoSize(certUri(server.port, 'default', refused));
    t.not(result.code, 0, describeRun(result));
  }
  const qemuForeign = await run('qemu-img', ['info', ...qemuArgs(server.port, keys.foreign, 'default')], { timeoutMs: 20_000 });
  t.not(qemuForeign.code, 0, describeRun(qemuForeign));

  // nbdcopy in and out over TLS, checked by content.
  const image = path.join(dir, 'in.raw');
  const content = seededBytes(8 * MiB, 13);
  fs.writeFileSync(image, content);
  await mustRun('nbdcopy', ['--flush', image, certUri(server.port, 'small', keys.alice)], { timeoutMs: 60_000 });
  const out = path.join(dir, 'out.raw');
  await mustRun('nbdcopy', [certUri(server.port, 'small', keys.alice), out], { timeoutMs: 60_000 });
  t.is(await sha256File(out), sha256(content), 'what nbdcopy wrote over TLS reads back');

  const qemuInfo = await mustRun('qemu-img', ['info', '--output=json', ...qemuArgs(server.port, keys.bob, 'small')]);
  t.is((JSON.parse(qemuInfo.stdout) as { 'virtual-size': number })['virtual-size'], 8 * MiB);
  const qemuIo = await mustRun('qemu-io', [...qemuArgs(server.port, keys.bob, 'small'), '-c', 'write -P 0xab 1M 64k', '-c', 'read -P 0xab 1M 64k']);
  t.notRegex(qemuIo.stdout + qemuIo.stderr, /fail|error|verification/i, describeRun(qemuIo));
  t.regex(qemuIo.stdout, /read 65536\/65536 bytes/);

  const after = await nbdinfoSize(certUri(server.port, 'default', keys.alice));
  t.is(after.code, 0, describeRun(after));
  t.notRegex(server.logs(), /"level":"error"/);
  await stopServer(t, server);
});

test('PSK: nbds://alice@...?tls-psk-file= works, a wrong key is refused, and the server serves others afterwards', async (t) => {
  const keys = await pki();
  const server = await tlsServer(t, ['--tls', 'require', '--tls-psk', keys.pskFile]);
  const good = await nbdinfoSize(pskUri(server.port, 'default', keys.pskFile));
  t.is(good.code, 0, describeRun(good));
  t.is(good.stdout.trim(), String(16 * 1024 ** 3));
  const wrong = await nbdinfoSize(pskUri(server.port, 'default', keys.wrongPskFile));
  t.not(wrong.code, 0, describeRun(wrong));
  const plain = await nbdinfoSize(`nbd://127.0.0.1:${server.port}/default`);
  t.not(plain.code, 0, describeRun(plain));
  const again = await nbdinfoSize(pskUri(server.port, 'default', keys.pskFile));
  t.is(again.code, 0, describeRun(again));
  await stopServer(t, server);
});

test('access lists: alice sees and opens her volume and its snapshot, bob and plain clients are told it does not exist; --clear opens it again', async (t) => {
  const keys = await pki();
  const server = await tlsServer(t, ['--tls', 'on', '--tls-certificates', keys.server]);
  await cli(server, ['volume', 'create', 'secret', '--size', '8M']);
  const set = await cli(server, ['volume', 'access', 'secret', '--allow', 'alice,carol']);
  t.regex(set.stdout, /only TLS clients alice, carol/);
  await cli(server, ['snapshot', 'create', 'secret', 's1']);
  const shown = JSON.parse((await cli(server, ['volume', 'show', 'secret', '--json'])).stdout) as { accessList: string[] | null };
  t.deepEqual(shown.accessList, ['alice', 'carol']);
  t.regex((await cli(server, ['volume', 'list'])).stdout, /ACCESS[\s\S]*alice,carol[\s\S]*everyone|ACCESS[\s\S]*everyone[\s\S]*alice,carol/);

  const base = `127.0.0.1:${server.port}`;
  t.deepEqual(await listed(`nbds://${base}/?tls-certificates=${keys.alice}`), ['default', 'secret', 'secret@s1']);
  t.deepEqual(await listed(`nbds://${base}/?tls-certificates=${keys.bob}`), ['default']);
  t.deepEqual(await listed(`nbds://${base}/?tls-certificates=${keys.anonymous}`), ['default'], 'TLS without a certificate: no identity');
  t.deepEqual(await listed(`nbd://${base}/`), ['default'], 'plain client');

  for (const name of ['secret', 'secret@s1']) {
    const alice = await nbdinfoSize(certUri(server.port, name, keys.alice));
    t.is(alice.code, 0, describeRun(alice));
    t.is(alice.stdout.trim(), String(8 * MiB));
    const bob = await nbdinfoSize(certUri(server.port, name, keys.bob));
    t.not(bob.code, 0, describeRun(bob));
    t.regex(bob.stderr, /does not exist|no export|unknown/i, describeRun(bob));
  }
  const plain = await nbdinfoSize(`nbd://${base}/secret`);
  t.not(plain.code, 0, describeRun(plain));
  t.regex(plain.stderr, /does not exist|no export|unknown/i, describeRun(plain));
  // qemu (bob) is refused the same way.
  const qemuBob = await run('qemu-img', ['info', ...qemuArgs(server.port, keys.bob, 'secret')], { timeoutMs: 20_000 });
  t.not(qemuBob.code, 0, describeRun(qemuBob));

  // The list is in the volume record: it survives a restart.
  await stopServer(t, server);
  const restarted = await tlsServer(t, ['--tls', 'on', '--tls-certificates', keys.server], server.dataDir);
  const again = `127.0.0.1:${restarted.port}`;
  t.deepEqual(await listed(`nbds://${again}/?tls-certificates=${keys.alice}`), ['default', 'secret', 'secret@s1']);
  t.deepEqual(await listed(`nbds://${again}/?tls-certificates=${keys.bob}`), ['default']);

  await cli(restarted, ['volume', 'access', 'secret', '--clear']);
  const bobAfter = await nbdinfoSize(certUri(restarted.port, 'secret', keys.bob));
  t.is(bobAfter.code, 0, describeRun(bobAfter));
  t.deepEqual(await listed(`nbd://${again}/`), ['default', 'secret', 'secret@s1']);
  await stopServer(t, restarted);
});

/** A byte-level NBD client over a socket that may be upgraded to TLS. */
class RawClient {
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  ended = false;

  constructor(public socket: net.Socket) {
    this.attach(socket);
  }

  private attach(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.waiter?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
    socket.on('error', () => {});
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new RawClient(socket);
    const greeting = await client.read(18);
    if (greeting.readBigUInt64BE(8) !== C.IHAVEOPT) throw new Error('no newstyle greeting');
    socket.write(u32(C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES));
    return client;
  }

  async read(bytes: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < bytes) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered.length} of ${bytes} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${bytes} bytes`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 100);
      });
    }
    const head = this.buffered.subarray(0, bytes);
    this.buffered = this.buffered.subarray(bytes);
    return head;
  }

  /** Sends one option and reads replies up to the final one: the reply types. */
  async option(type: number, data: Buffer = Buffer.alloc(0)): Promise<number[]> {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(C.IHAVEOPT, 0);
    header.writeUInt32BE(type, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
    const types: number[] = [];
    for (;;) {
      const reply = await this.read(20);
      const replyType = reply.readUInt32BE(12);
      await this.read(reply.readUInt32BE(16));
      types.push(replyType);
      if (replyType !== C.NBD_REP_SERVER && replyType !== C.NBD_REP_INFO && replyType !== C.NBD_REP_META_CONTEXT) return types;
    }
  }

  /** The TLS client handshake on this connection (after STARTTLS's ACK). */
  async startTls(certificates: string): Promise<void> {
    const secure = tls.connect({
      socket: this.socket,
      ca: fs.readFileSync(path.join(certificates, 'ca-cert.pem')),
      cert: fs.readFileSync(path.join(certificates, 'client-cert.pem')),
      key: fs.readFileSync(path.join(certificates, 'client-key.pem')),
      servername: 'localhost',
      minVersion: 'TLSv1.2',
    });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    this.socket = secure;
    this.attach(secure);
  }

  async closed(timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    return this.ended;
  }
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function metaContextRequest(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const query of queries) parts.push(u32(Buffer.byteLength(query)), Buffer.from(query));
  return Buffer.concat(parts);
}

test('STARTTLS edge cases (raw client): FORCEDTLS answers TLS_REQD to everything but STARTTLS and ABORT, STARTTLS with data is invalid, state is forgotten after TLS, a second STARTTLS is invalid, garbage or a hang-up instead of a ClientHello closes cleanly', async (t) => {
  const keys = await pki();
  const server = await tlsServer(t, ['--tls', 'require', '--tls-certificates', keys.server]);

  const client = await RawClient.connect(server.port);
  for (const type of [C.NBD_OPT_LIST, C.NBD_OPT_INFO, C.NBD_OPT_GO, C.NBD_OPT_STRUCTURED_REPLY, 99]) {
    const data = type === C.NBD_OPT_INFO || type === C.NBD_OPT_GO ? Buffer.concat([u32(7), Buffer.from('default'), Buffer.alloc(2)]) : Buffer.alloc(0);
    t.deepEqual(await client.option(type, data), [C.NBD_REP_ERR_TLS_REQD], `option ${type} before STARTTLS`);
  }
  t.deepEqual(await client.option(C.NBD_OPT_STARTTLS, Buffer.from('x')), [C.NBD_REP_ERR_INVALID], 'STARTTLS with data');
  t.deepEqual(await client.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ACK]);
  await client.startTls(keys.alice);
  t.deepEqual(await client.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ERR_INVALID], 'second STARTTLS, over TLS');
  t.deepEqual(await client.option(C.NBD_OPT_LIST), [C.NBD_REP_SERVER, C.NBD_REP_ACK]);
  t.deepEqual(await client.option(C.NBD_OPT_ABORT), [C.NBD_REP_ACK]);
  t.true(await client.closed());

  // Structured replies negotiated in plain text are forgotten after STARTTLS (server in `on` mode).
  const selective = await tlsServer(t, ['--tls', 'on', '--tls-certificates', keys.server, '--tls-verify-peer']);
  const forgetful = await RawClient.connect(selective.port);
  t.deepEqual(await forgetful.option(C.NBD_OPT_STRUCTURED_REPLY), [C.NBD_REP_ACK]);
  t.deepEqual(await forgetful.option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:allocation'])), [C.NBD_REP_META_CONTEXT, C.NBD_REP_ACK]);
  t.deepEqual(await forgetful.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ACK]);
  await forgetful.startTls(keys.bob);
  t.deepEqual(await forgetful.option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:allocation'])), [C.NBD_REP_ERR_INVALID], 'structured replies forgotten');
  forgetful.socket.destroy();

  // A certificate with CN alice from another CA: OpenSSL's client sends it (GnuTLS's would not,
  // as it is not from a CA the server named), the handshake completes on the client's side, and
  // the server, which finds the chain does not verify, hangs up before any option is answered.
  const impostor = await RawClient.connect(selective.port);
  t.deepEqual(await impostor.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ACK]);
  await impostor.startTls(keys.foreign).catch(() => {});
  await t.throwsAsync(impostor.option(C.NBD_OPT_LIST), { message: /closed/ });
  await waitFor(() => /TLS client refused.*client certificate not accepted/.test(selective.logs()), 5000, () => selective.logs());

  for (const [what, bytes, hangUp] of [
    ['garbage instead of a ClientHello', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(4)), false],
    ['a hang-up in the middle of a ClientHello', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), true],
  ] as const) {
    const raw = await RawClient.connect(server.port);
    t.deepEqual(await raw.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ACK]);
    raw.socket.write(bytes);
    if (hangUp) raw.socket.destroy();
    else t.true(await raw.closed(), `${what}: the server closes the connection`);
    const next = await nbdinfoSize(certUri(server.port, 'default', keys.alice));
    t.is(next.code, 0, `${what}: the next client is served\n${describeRun(next)}`);
  }
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.notRegex(server.logs(), /"level":"error"/);
  await stopServer(t, server);
  await stopServer(t, selective);
});

test('--tls off (the default): STARTTLS gets ERR_POLICY, never TLS_REQD', async (t) => {
  const server = await startServer(t, { tcp: true });
  const client = await RawClient.connect(server.port!);
  t.deepEqual(await client.option(C.NBD_OPT_STARTTLS), [C.NBD_REP_ERR_POLICY]);
  t.deepEqual(await client.option(C.NBD_OPT_LIST), [C.NBD_REP_SERVER, C.NBD_REP_ACK]);
  client.socket.destroy();
  await stopServer(t, server);
});

test('missing, unreadable or mismatched credentials stop the start before anything listens, saying what to do', async (t) => {
  const keys = await pki();
  const dir = tempDir(t);
  /** A credentials directory under `dir`: each file copied from [source directory, source name]. */
  const credentials = (name: string, files: Record<string, [string, string]>): string => {
    const target = path.join(dir, name);
    fs.mkdirSync(target);
    for (const [file, [from, source]] of Object.entries(files)) fs.copyFileSync(path.join(from, source), path.join(target, file));
    return target;
  };
  const mismatched = credentials('mismatched', { 'ca-cert.pem': [keys.server, 'ca-cert.pem'], 'server-cert.pem': [keys.server, 'server-cert.pem'], 'server-key.pem': [keys.bob, 'client-key.pem'] });
  const noKey = credentials('no-key', { 'server-cert.pem': [keys.server, 'server-cert.pem'] });
  const unreadable = credentials('unreadable', { 'server-cert.pem': [keys.server, 'server-cert.pem'] });
  fs.mkdirSync(path.join(unreadable, 'server-key.pem')); // a directory: unreadable as a file, even for root
  const foreignSigned = credentials('foreign-signed', { 'ca-cert.pem': [keys.server, 'ca-cert.pem'], 'server-cert.pem': [keys.foreign, 'client-cert.pem'], 'server-key.pem': [keys.foreign, 'client-key.pem'] });
  const badPsk = path.join(dir, 'bad.psk');
  fs.writeFileSync(badPsk, 'alice:not-hex\n');
  const cases: Array<[string, string[], RegExp]> = [
    ['no such directory', ['--tls', 'require', '--tls-certificates', path.join(dir, 'nowhere')], /not a directory/],
    ['no key', ['--tls', 'on', '--tls-certificates', noKey], /server-key\.pem is missing/],
    ['unreadable key', ['--tls', 'on', '--tls-certificates', unreadable], /server-key\.pem could not be read/],
    ['mismatched key', ['--tls', 'on', '--tls-certificates', mismatched], /is not the key of server-cert\.pem/],
    ['certificate from another CA', ['--tls', 'on', '--tls-certificates', foreignSigned], /not signed by ca-cert\.pem/],
    ['verify-peer without a CA', ['--tls', 'on', '--tls-certificates', noKey, '--tls-verify-peer'], /ca-cert\.pem|server-key\.pem/],
    ['no credentials', ['--tls', 'require'], /needs credentials/],
    ['credentials with TLS off', ['--tls-certificates', keys.server], /--tls is off/],
    ['bad PSK file', ['--tls', 'on', '--tls-psk', badPsk], /line 1 is not "username:hexkey"/],
    ['both kinds', ['--tls', 'on', '--tls-certificates', keys.server, '--tls-psk', keys.pskFile], /either --tls-certificates or --tls-psk/],
  ];
  await Promise.all(
    cases.map(async ([what, args, message]) => {
      const dataDir = path.join(dir, `data-${what.replace(/\W+/g, '-')}`);
      const result = await run(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...args], { timeoutMs: 30_000, env: { ...process.env, PSTORAGE_LOG: 'info' } });
      t.is(result.code, 2, `${what}\n${describeRun(result)}`);
      t.regex(result.stderr, message, `${what}\n${describeRun(result)}`);
      t.notRegex(result.stderr, /"msg":"listening"/, what);
      t.false(fs.existsSync(dataDir), `${what}: the data directory is not even created`);
    }),
  );
  // The environment works like the flags.
  const viaEnv = await run(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', path.join(dir, 'env'), '--listen', '127.0.0.1:0'], { timeoutMs: 30_000, env: { ...process.env, PSTORAGE_TLS: 'require', PSTORAGE_TLS_CERTIFICATES: mismatched } });
  t.is(viaEnv.code, 2, describeRun(viaEnv));
  t.regex(viaEnv.stderr, /is not the key of server-cert\.pem/);
});
