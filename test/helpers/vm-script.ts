/**
 * Runs one of the qemu guest scripts (scripts/vm-test.sh, scripts/vm-failover-test.sh) from an ava
 * test: its output is kept in memory and in a log file; on failure the test log gets the exit
 * status, the log's path and its last lines, on success only the lines a reader wants to see.
 */
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, makeTempDir } from './pstorage-process.js';

const LOG_TAIL_LINES = 150;

export interface VmScriptRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/** `bash SCRIPT ARGS` from the repository root; `summary` picks the lines logged after a pass. */
export async function runVmScript(t: ExecutionContext, script: string, args: string[], summary: RegExp): Promise<VmScriptRun> {
  const logDir = makeTempDir('pstorage-vm-log-');
  const logPath = path.join(logDir, `${path.basename(script, '.sh')}.log`);
  const logFile = fs.createWriteStream(logPath);
  const child = spawn('bash', [path.join(REPO_ROOT, script), ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  // On a test timeout, SIGTERM makes the script stop qemu and the processes it started, by their PIDs.
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });

  let output = '';
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (text: string) => {
      output += text;
      logFile.write(text);
    });
  }
  const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  await new Promise<void>((resolve) => logFile.end(resolve));

  const lines = output.split('\n');
  if (exit.code !== 0) {
    t.log(`${script} exited with code ${exit.code} (signal ${exit.signal}); full log: ${logPath}`);
    t.log(lines.slice(-LOG_TAIL_LINES).join('\n'));
  } else {
    for (const line of lines.filter((text) => summary.test(text))) t.log(line);
    fs.rmSync(logDir, { recursive: true, force: true });
  }
  return { ...exit, output };
}
