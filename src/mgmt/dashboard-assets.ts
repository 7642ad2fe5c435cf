/**
 * The web dashboard's static files, served by the management API at `/dashboard/` (api-server.ts).
 *
 * What it owns: a fixed table of the files that may be served, so no request path ever reaches
 * the file system: the page, its script and style sheet (the repository's `dashboard/` folder,
 * plain browser JavaScript with no build step), and uPlot's browser build and style sheet, taken
 * from the `uplot` package installed with pstorage (node_modules; nothing is fetched at run time).
 * Files are read once, on first request, and kept in memory (about 70 KiB in all).
 *
 * These routes need no token: they hold no data. The page asks for the token once, keeps it in
 * the tab's sessionStorage, and sends it as a bearer token on every data route. The Content
 * Security Policy allows scripts, styles and requests to this origin only.
 */
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { StorageError } from '../common/errors.js';

const require = createRequire(import.meta.url);
/** build/src/mgmt → the repository root. */
const DASHBOARD_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../dashboard');
const UPLOT_DIR = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));

const ASSETS: ReadonlyMap<string, { file: string; type: string }> = new Map([
  ['index.html', { file: path.join(DASHBOARD_DIR, 'index.html'), type: 'text/html; charset=utf-8' }],
  ['dashboard.js', { file: path.join(DASHBOARD_DIR, 'dashboard.js'), type: 'text/javascript; charset=utf-8' }],
  ['dashboard.css', { file: path.join(DASHBOARD_DIR, 'dashboard.css'), type: 'text/css; charset=utf-8' }],
  ['uPlot.iife.min.js', { file: path.join(UPLOT_DIR, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' }],
  ['uPlot.min.css', { file: path.join(UPLOT_DIR, 'uPlot.min.css'), type: 'text/css; charset=utf-8' }],
]);
const CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

const loaded = new Map<string, Buffer>();

function load(name: string): { bytes: Buffer; type: string } {
  const asset = ASSETS.get(name);
  if (asset === undefined) throw StorageError.notFound(`no dashboard file "${name}"; the dashboard is at /dashboard/`);
  let bytes = loaded.get(name);
  if (bytes === undefined) {
    try {
      bytes = fs.readFileSync(asset.file);
    } catch (error) {
      throw StorageError.io(`the dashboard file ${asset.file} cannot be read (is pstorage installed whole, with its node_modules?)`, error);
    }
    loaded.set(name, bytes);
  }
  return { bytes, type: asset.type };
}

export async function sendAsset(name: string, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const { bytes, type } = load(name);
  request.resume();
  response.writeHead(200, {
    'content-type': type,
    'content-length': bytes.length,
    'cache-control': 'no-cache',
    'content-security-policy': CONTENT_SECURITY_POLICY,
    'x-content-type-options': 'nosniff',
  });
  response.end(bytes);
}
