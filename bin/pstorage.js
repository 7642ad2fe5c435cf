#!/usr/bin/env node
// Entry point: runs the compiled CLI from build/. Build it first with `npm install && npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../build/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('pstorage is not built yet: run `npm install && npm run build` in ' + fileURLToPath(new URL('..', import.meta.url)) + '\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
