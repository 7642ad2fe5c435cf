/**
 * What the ActiveCluster tests start for themselves, on loopback only: an etcd on free ports with
 * its own temporary data directory, two `pstorage serve` processes with replication listeners and
 * a shared secret, and a TCP proxy of the test's own between them (array A dials B through it), so
 * a test can cut the link and heal it without touching either array.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { cleanupOnExit, describeRun, run, SYSTEM_PYTHON, tempDir } from '../helpers/interop.js';
import { startPstorage, type PstorageProcess } from '../helpers/pstorage-process.js';
import { pstorage } from '../cli/cli-run.js';

export const ETCD_BIN = '/usr/bin/etcd';
export const POD_IO = path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..'), 'test/replication/pod_io.py');

/** A port the kernel says is free now (bound to 0, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface Etcd {
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** etcd on two free loopback ports; `stop` kills it (SIGKILL), `start` brings it back on the same data. */
export async function startEtcd(t: ExecutionContext, dir: string): Promise<Etcd> {
  const clientPort = await freePort();
  const peerPort = await freePort();
  const url = `http://127.0.0.1:${clientPort}`;
  const dataDir = path.join(dir, 'etcd');
  let child: ChildProcess | null = null;
  const args = [
    '--name', 'mediator', '--data-dir', dataDir,
    '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-cluster', `mediator=http://127.0.0.1:${peerPort}`, '--log-level', 'error',
  ];
  const stop = async () => {
    const running = child;
    child = null;
    if (running === null || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill('SIGKILL');
    await exited;
  };
  const start = async () => {
    child = spawn(ETCD_BIN, args, { stdio: 'ignore' });
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (await healthy(url)) return;
      if (Date.now() > deadline) throw new Error('etcd did not become healthy within 15 s');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  const unregister = cleanupOnExit(() => child?.kill('SIGKILL'));
  t.teardown(async () => {
    unregister();
    await stop();
  });
  await start();
  return { url, stop, start };
}

function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(`${url}/health`, (response) => {
      let body = '';
      response.on('data', (chunk) => (body += chunk));
      response.on('end', () => resolve(body.includes('"health":"true"')));
    });
    request.on('error', () => resolve(false));
    request.setTimeout(1000, () => request.destroy());
  });
}

/** A TCP proxy to `targetPort`; `cut` drops every connection and refuses new ones until `heal`. */
export class LinkProxy {
  port = 0;
  private cutOff = false;
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((client) => this.connected(client));

  constructor(private readonly targetPort: number) {}

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private connected(client: net.Socket): void {
    if (this.cutOff) {
      client.destroy();
      return;
    }
    const upstream = net.connect({ host: '127.0.0.1', port: this.targetPort });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }

  cut(): void {
    this.cutOff = true;
    for (const socket of this.sockets) socket.destroy();
  }

  heal(): void {
    this.cutOff = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

export interface ArrayProcess {
  name: string;
  dataDir: string;
  replicationPort: number;
  server: PstorageProcess;
}

/** `pstorage serve` with a replication listener on a free port and the shared secret. */
export async function startArray(t: ExecutionContext, name: string, dir: string, secretFile: string, replicationPort?: number): Promise<ArrayProcess> {
  const port = replicationPort ?? (await freePort());
  const dataDir = path.join(dir, name);
  const server = await startPstorage({
    dataDir,
    tcp: true,
    args: ['--capacity', '4G', '--cache-mb', '256', '--replication-listen', `127.0.0.1:${port}`, '--replication-secret-file', secretFile],
  });
  const unregister = cleanupOnExit(() => server.child.kill('SIGKILL'));
  t.teardown(async () => {
    unregister();
    if (server.child.exitCode === null && server.child.signalCode === null) await server.stop('SIGKILL');
  });
  return { name, dataDir, replicationPort: port, server };
}

export interface Cluster {
  dir: string;
  etcd: Etcd;
  secretFile: string;
  a: ArrayProcess;
  b: ArrayProcess;
  /** A dials B through this. */
  proxy: LinkProxy;
}

/** etcd, arrays A and B, the proxy, and pod `pod` with a `sizeBytes` volume `vol` on both. */
export async function startCluster(t: ExecutionContext, options: { volumeSize: string }): Promise<Cluster> {
  const dir = tempDir(t, 'pstorage-ac-');
  const secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, Buffer.from('0123456789abcdef0123456789abcdef'), { mode: 0o600 });
  const [etcd, a, b] = await Promise.all([startEtcd(t, dir), startArray(t, 'a', dir, secretFile), startArray(t, 'b', dir, secretFile)]);
  const proxy = new LinkProxy(b.replicationPort);
  await proxy.listen();
  t.teardown(() => proxy.close());
  await cli(a.dataDir, ['pod', 'create', 'pod', '--peer', `127.0.0.1:${proxy.port}`, '--mediator', etcd.url]);
  await cli(a.dataDir, ['volume', 'create', 'vol', '--size', options.volumeSize, '--pod', 'pod']);
  return { dir, etcd, secretFile, a, b, proxy };
}

/** `pstorage ARGS -d DIR` that must succeed; returns stdout. */
export async function cli(dataDir: string, args: string[]): Promise<string> {
  const result = await pstorage(dataDir, args);
  if (result.code !== 0) throw new Error(describeRun(result));
  return result.stdout;
}

export interface PodStatus {
  state: 'in-sync' | 'resyncing' | 'degraded' | 'suspended';
  reason: string;
  role: string;
  link: string;
  changedChunks: number;
  lastResyncMs: number | null;
  lastResyncChunks: number;
  linkDataBytesSent: number;
  linkWriteBytes: number;
  linkWriteBytesSent: number;
}

/** GET /api/v1/pods/NAME over the array's management socket (cheaper than a CLI process when polling). */
export function podStatus(array: ArrayProcess, pod = 'pod'): Promise<PodStatus> {
  return new Promise((resolve, reject) => {
    const request = http.request({ socketPath: path.join(array.dataDir, 'pstorage.sock'), path: `/api/v1/pods/${pod}` }, (response) => {
      let body = '';
      response.on('data', (chunk) => (body += chunk));
      response.on('end', () => resolve(JSON.parse(body) as PodStatus));
    });
    request.on('error', reject);
    request.end();
  });
}

export async function waitForState(array: ArrayProcess, states: Array<PodStatus['state']>, timeoutMs: number): Promise<PodStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: PodStatus | null = null;
  for (;;) {
    last = await podStatus(array);
    if (states.includes(last.state)) return last;
    if (Date.now() > deadline) throw new Error(`array ${array.name}: pod state ${last.state} (${last.reason}), wanted ${states.join('|')} within ${timeoutMs} ms\n${array.server.logs().split('\n').filter((line) => line.includes('replication')).slice(-20).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export function podIo(args: string[], timeoutMs = 60_000) {
  return run(SYSTEM_PYTHON, [POD_IO, ...args], { timeoutMs });
}

/** sha256 of a whole export, read with nbdcopy. */
export async function exportDigest(uri: string): Promise<string> {
  const result = await run('sh', ['-c', `nbdcopy '${uri}' - | sha256sum`], { timeoutMs: 120_000, env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
  if (result.code !== 0) throw new Error(describeRun(result));
  return result.stdout.split(' ')[0]!;
}
