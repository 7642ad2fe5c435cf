/**
 * docs/dashboard.png under live traffic: a fresh `pstorage serve` (1 GiB of NAND, the management
 * API on loopback TCP, capacity sampled every 2 s through PSTORAGE_ANALYTICS_INTERVAL_MS), a second
 * volume, a fill and a burst of 4 KiB overwrites so that garbage collection erases some blocks
 * (the wear heat map then varies), then two fio jobs over NBD in the background (4 KiB random
 * writes at QD8 on `default`, 64 KiB random reads and writes at QD4 on `db`) while headless
 * Chromium keeps the dashboard open for ~30 s of 2-second updates and takes the screenshot.
 *
 *   node build/scripts/dashboard-screenshot.js [--out docs/dashboard.png] [--watch-s 30] [--repo DIR]
 *
 * scripts/dashboard-screenshot.sh builds and runs it. Needs fio with its nbd engine and chromium.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Browser } from '../test/helpers/chromium.js';
import { startServe } from './serve-process.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const options = { out: '', watchS: 30, repo: path.resolve(here, '../..') };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const [flag, value] = [argv[i]!, argv[i + 1]];
  if (value === undefined) throw new Error(`${flag} needs a value`);
  if (flag === '--out') options.out = path.resolve(value);
  else if (flag === '--watch-s') options.watchS = Number(value);
  else if (flag === '--repo') options.repo = path.resolve(value);
  else throw new Error(`unknown option ${flag} (see the comment at the top of scripts/dashboard-screenshot.ts)`);
}
if (options.out === '') options.out = path.join(options.repo, 'docs/dashboard.png');

const log = (text: string) => process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${text}\n`);

async function startServer(workDir: string, token: string): Promise<{ child: ChildProcess; nbdPort: number; apiPort: number }> {
  const server = await startServe(options.repo, ['--data-dir', path.join(workDir, 'data'), '--listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0', '--capacity', '1G'], {
    env: { PSTORAGE_API_TOKEN: token, PSTORAGE_ANALYTICS_INTERVAL_MS: '2000' },
    portMessages: ['listening', 'management API listening'],
  });
  return { child: server.child, nbdPort: server.ports.get('listening')!, apiPort: server.ports.get('management API listening')! };
}

function apiPost(port: number, token: string, route: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, path: route, method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode ?? 0));
    });
    request.on('error', reject);
    request.end(JSON.stringify(body));
  });
}

/** Data that compresses about 2:1 and repeats a little, so the reduction panel has something to say. */
const DATA = ['--refill_buffers=1', '--buffer_compress_percentage=50', '--dedupe_percentage=15', '--randrepeat=0'];

function fio(args: string[]): void {
  const result = spawnSync('fio', ['--ioengine=nbd', ...DATA, ...args, '--output-format=terse'], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`fio failed (${result.status}): ${result.stderr}`);
}

async function main(): Promise<void> {
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-dashboard-shot-'));
  const token = crypto.randomBytes(12).toString('hex');
  const server = await startServer(workDir, token);
  let traffic: ChildProcess | null = null;
  let browser: Browser | null = null;
  try {
    const uri = (volume: string) => `--uri=nbd://127.0.0.1:${server.nbdPort}/${volume}`;
    if ((await apiPost(server.apiPort, token, '/api/v1/volumes', { name: 'db', size: '2G' })) !== 201) throw new Error('creating volume db failed');
    log('filling 384 MiB of default and 128 MiB of db');
    fio(['--name=fill-default', uri('default'), '--rw=write', '--bs=256k', '--iodepth=4', '--size=384M']);
    fio(['--name=fill-db', uri('db'), '--rw=write', '--bs=256k', '--iodepth=4', '--size=128M']);
    log('8 s of 4 KiB overwrites, so that garbage collection erases blocks');
    fio(['--name=overwrite', uri('default'), '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=384M', '--time_based=1', '--runtime=8']);

    const runtimeS = options.watchS + 20;
    log(`traffic for ${runtimeS} s: 4 KiB randwrite QD8 on default, 64 KiB randrw QD4 on db`);
    traffic = spawn('fio', ['--ioengine=nbd', ...DATA, '--time_based=1', `--runtime=${runtimeS}`, '--output-format=terse',
      '--name=default-4k-randwrite', uri('default'), '--rw=randwrite', '--bs=4k', '--iodepth=8', '--size=384M',
      '--name=db-64k-randrw', uri('db'), '--rw=randrw', '--bs=64k', '--iodepth=4', '--size=128M'], { stdio: 'ignore' });
    const trafficExit = new Promise<number | null>((resolve) => traffic!.once('exit', resolve));

    browser = Browser.launch(path.join(workDir, 'profile'));
    const page = await browser.newPage(1280, 1200);
    await page.goto(`http://127.0.0.1:${server.apiPort}/dashboard/`);
    await page.waitFor('!document.querySelector("#token-form").hidden', 10_000, 'the token form');
    await page.typeAndEnter('#token', token);
    const updates = Math.round(options.watchS / 2);
    log(`watching ${updates} updates`);
    // The page updates every 2 s (analytics and wear every 10 s: the last one lands on an update).
    await page.waitFor(`Number(document.body.dataset.updates) >= ${updates + 1}`, (options.watchS + 30) * 1000, `${updates} updates`);
    if (traffic.exitCode !== null) throw new Error(`fio stopped early (exit ${traffic.exitCode})`);
    fs.mkdirSync(path.dirname(options.out), { recursive: true });
    await page.screenshot(options.out);
    const samples = await page.evaluate<string>('document.querySelector("#capacity-chart").dataset.samples');
    log(`wrote ${options.out} (${fs.statSync(options.out).size} bytes; ${samples} capacity samples on the chart); waiting for fio`);
    await browser.close();
    browser = null;
    const code = await trafficExit;
    traffic = null;
    if (code !== 0) throw new Error(`fio exited with ${code}`);
    log('done');
  } finally {
    if (browser !== null) await browser.close();
    if (traffic !== null && traffic.exitCode === null) traffic.kill('SIGTERM');
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.once('exit', resolve));
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`dashboard-screenshot: ${(error as Error).stack ?? error}\n`);
  process.exitCode = 1;
});
