#!/usr/bin/env node
// Runs ava, streams its output, and ends with the line CI reads: "N passed, N failed, N skipped".
// ava's own summary says "N tests passed" etc.; an ava failure without a counted test failure
// (an uncaught exception, a timed-out file) still counts as a failure. Exits with ava's code.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// ava's package exports do not include its CLI entry point, so it is found by path.
const avaCli = fileURLToPath(new URL('../node_modules/ava/entrypoints/cli.mjs', import.meta.url));
const child = spawn(process.execPath, [avaCli, ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } });

let output = '';
for (const stream of [child.stdout, child.stderr]) {
  stream.setEncoding('utf8');
  stream.on('data', (text) => {
    output += text;
    (stream === child.stdout ? process.stdout : process.stderr).write(text);
  });
}

child.on('exit', (code, signal) => {
  const count = (pattern) => {
    const match = pattern.exec(output);
    return match ? Number(match[1]) : 0;
  };
  const lines = (pattern) => output.split('\n').filter((line) => pattern.test(line)).length;
  // ava's summary omits the passed count when something failed, so count its verbose lines too.
  const passed = Math.max(count(/^\s*(\d+) tests? passed/m), lines(/^\s*✔/));
  const crashes = count(/^\s*(\d+) uncaught exceptions?/m) + count(/^\s*(\d+) unhandled rejections?/m) + lines(/exited with a non-zero exit code/);
  let failed = Math.max(count(/^\s*(\d+) tests? failed/m), lines(/^\s*✘ \[fail\]/)) + crashes;
  const skipped = Math.max(count(/^\s*(\d+) tests? skipped/m), lines(/^\s*- \[skip\]/)) + count(/^\s*(\d+) tests? todo/m);
  if (/Timed out while running tests/.test(output)) failed += 1;
  if ((code !== 0 || signal) && failed === 0) failed = 1;
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  process.exit(code ?? 1);
});
