/**
 * The README as a new user meets it (issue 12, item 7): its links stay inside the repository, the
 * data directory its quick start creates is ignored by git, the Debian packages it names for the
 * tests are the ones scripts/test.sh installs (all real package names), its Node version is
 * package.json's, and a plain `nbdinfo --list` leaves no info-level line that reads like an error.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import test from 'ava';
import { REPO_ROOT, startPstorage } from '../helpers/pstorage-process.js';

const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');

test('every relative link and image in the README resolves to a file in the repository', (t) => {
  const targets = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((match) => match[1]!).filter((target) => !/^[a-z]+:/.test(target) && !target.startsWith('#'));
  t.true(targets.length > 10, `links found: ${targets.length}`);
  for (const target of targets) {
    const resolved = path.resolve(REPO_ROOT, target.split('#')[0]!);
    t.true(resolved.startsWith(REPO_ROOT + path.sep), `${target} stays inside the repository`);
    t.true(fs.existsSync(resolved), `${target} exists`);
  }
});

test('the quick start data directory is ignored by git', (t) => {
  const ignored = fs.readFileSync(path.join(REPO_ROOT, '.gitignore'), 'utf8').split('\n');
  t.true(ignored.includes('pstorage-data/'), '.gitignore lists pstorage-data/');
});

test('the Debian packages the README names for the tests are the ones test.sh installs', (t) => {
  const script = fs.readFileSync(path.join(REPO_ROOT, 'scripts/test.sh'), 'utf8');
  const installed = script.match(/DEBIAN_PACKAGES=\(([^)]*)\)/)![1]!.split(/\s+/).filter(Boolean);
  const section = readme.slice(readme.indexOf('## Running the tests'), readme.indexOf('What the suite covers'));
  const named = section.match(/\(`([^`]+)`/)![1]!.split(/\s+/).filter(Boolean);
  t.deepEqual([...named].sort(), [...installed].sort(), 'README lists exactly DEBIAN_PACKAGES');
  // Real package names (apt knows them), e.g. nbdfuse ships in libnbd-bin and is not one.
  const known = spawnSync('apt-cache', ['show', '--no-all-versions', ...named], { encoding: 'utf8' });
  t.is(known.status, 0, known.stderr);
});

test("the README's Node version is package.json's", (t) => {
  const engines = (JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
  const version = engines.replace(/^>=\s*/, '');
  t.regex(readme, new RegExp(`Node ${version.replace('.', '\\.')}\\+`), `README says Node ${version}+`);
});

test('listing exports with nbdinfo logs nothing at info level that reads like an error', async (t) => {
  const server = await startPstorage();
  try {
    const listed = spawnSync('nbdinfo', ['--list', server.unixUri()], { encoding: 'utf8', timeout: 20_000 });
    t.is(listed.status, 0, listed.stderr);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const lines = server.logs().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: string; msg: string; reason?: string });
    const alarming = lines.filter((line) => line.level !== 'debug' && /abort|fail|error/i.test(`${line.msg} ${line.reason ?? ''}`));
    t.deepEqual(alarming, [], 'no info/warn/error line about aborting');
  } finally {
    await server.stop();
  }
});
