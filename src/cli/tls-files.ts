/**
 * Reads the TLS options of `pstorage serve` (certificate directory, PSK file) and turns them into
 * the NBD server's TLS configuration before anything listens, so that a missing, unreadable or
 * mismatched file stops the start with a message saying what to do.
 *
 * The certificate directory has nbdkit's and qemu's layout: `ca-cert.pem` (the CA that signs
 * client certificates; needed for client identities and --tls-verify-peer), `server-cert.pem`
 * and `server-key.pem`. The PSK file is psktool's: `username:hexkey` lines.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StorageError } from '../common/errors.js';
import type { TlsMode } from '../protocol/handshake.js';
import { makeTlsConfig, parsePskFile, type TlsServerConfig } from '../server/tls.js';

export interface TlsCliOptions {
  mode: TlsMode;
  certificatesDir: string | null;
  verifyPeer: boolean;
  pskFile: string | null;
}

const HOW_TO = 'see "TLS" in the README for making them with certtool or openssl';

export function loadTlsConfig(options: TlsCliOptions): TlsServerConfig | null {
  if (options.mode === 'off') {
    if (options.certificatesDir !== null || options.pskFile !== null || options.verifyPeer) {
      throw StorageError.invalidArgument('TLS options were given but --tls is off: add --tls on (offer TLS) or --tls require (TLS only)');
    }
    return null;
  }
  if (options.certificatesDir === null && options.pskFile === null) {
    throw StorageError.invalidArgument(`--tls ${options.mode} needs credentials: --tls-certificates DIR (ca-cert.pem, server-cert.pem, server-key.pem) and/or --tls-psk FILE (psktool -u NAME -p FILE); ${HOW_TO}`);
  }
  let caPem: Buffer | null = null;
  let certPem: Buffer | null = null;
  let keyPem: Buffer | null = null;
  if (options.certificatesDir !== null) {
    const dir = path.resolve(options.certificatesDir);
    if (!isDirectory(dir)) throw StorageError.invalidArgument(`--tls-certificates ${dir}: not a directory; it must hold ca-cert.pem, server-cert.pem and server-key.pem (${HOW_TO})`);
    certPem = readCredential(path.join(dir, 'server-cert.pem'), 'the server certificate');
    keyPem = readCredential(path.join(dir, 'server-key.pem'), "the server certificate's private key");
    const caPath = path.join(dir, 'ca-cert.pem');
    if (fs.existsSync(caPath)) caPem = readCredential(caPath, 'the CA certificate');
    else if (options.verifyPeer) throw StorageError.invalidArgument(`--tls-verify-peer needs ${caPath}, the CA that signs client certificates (${HOW_TO})`);
  }
  const pskKeys = options.pskFile === null ? null : parsePskFile(readCredential(path.resolve(options.pskFile), 'the PSK file').toString('utf8'));
  return makeTlsConfig(options.mode, { caPem, certPem, keyPem, pskKeys }, options.verifyPeer);
}

function isDirectory(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory();
  } catch {
    return false;
  }
}

function readCredential(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw StorageError.invalidArgument(`${file} is missing: it should hold ${what} (${HOW_TO})`, error);
    if (code === 'EACCES' || code === 'EPERM') throw StorageError.invalidArgument(`${file} is not readable by this user: it holds ${what}; give the user running pstorage read access (and no one else, for a key)`, error);
    throw StorageError.invalidArgument(`${file} could not be read (${(error as Error).message}): it should hold ${what}`, error);
  }
}
