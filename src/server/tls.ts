/**
 * TLS for the NBD port (NBD_OPT_STARTTLS): the server's credentials, checked once at start, and the
 * upgrade of one accepted socket to a server-side `tls.TLSSocket` after the handshake answered
 * STARTTLS with ACK.
 *
 * Credentials come in as bytes (the CLI reads the files): an X.509 certificate and key, with the
 * CA that signs client certificates, in the layout nbdkit and qemu use (`ca-cert.pem`,
 * `server-cert.pem`, `server-key.pem`), and/or pre-shared keys in psktool's `username:hexkey`
 * format. TLS 1.2 is the minimum (the spec's MUST), 1.3 is preferred (OpenSSL picks the highest
 * both ends speak).
 *
 * Identity: a client certificate that chains to the CA gives its subject common name; a PSK
 * handshake gives the PSK username. A certificate from anywhere else gives no identity; with
 * `verifyPeer` such a client (or one with no certificate and no PSK) is disconnected.
 *
 * PSK: libnbd and qemu (GnuTLS, priority "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK") offer TLS 1.3 with a
 * PSK, which OpenSSL serves through Node's `pskCallback` with a SHA-256 suite (observed:
 * TLS_CHACHA20_POLY1305_SHA256), and TLS 1.2 PSK suites, which Node's default list bans ("!PSK");
 * both are enabled when a PSK file is given. A server is either PSK or certificate based, as with
 * qemu's tls-creds-psk and tls-creds-x509 (nbdkit lets a PSK file override certificates): with
 * both, OpenSSL took the PSK and still sent its certificate in TLS 1.3, which GnuTLS clients that
 * hold only a PSK refused ("Error in the certificate").
 */
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import { StorageError } from '../common/errors.js';
import type { TlsMode } from '../protocol/handshake.js';

/** TLS 1.2 suites for a PSK, strongest first; ECDHE and DHE ones give forward secrecy. */
const TLS12_PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
];

export interface TlsCredentialBytes {
  /** `ca-cert.pem`: the CA that signs client certificates (needed for identities and `verifyPeer`). */
  caPem: Buffer | null;
  /** `server-cert.pem` and `server-key.pem`, together or not at all. */
  certPem: Buffer | null;
  keyPem: Buffer | null;
  /** PSK username to key (psktool file). */
  pskKeys: Map<string, Buffer> | null;
}

export interface TlsServerConfig {
  mode: TlsMode;
  secureContext: tls.SecureContext;
  /** Ask clients for a certificate (a CA is configured, so identities can be checked). */
  requestCert: boolean;
  /** Disconnect a client without a certificate signed by the CA (or a PSK). */
  verifyPeer: boolean;
  pskKeys: Map<string, Buffer> | null;
}

/**
 * Builds the server's TLS configuration, or throws INVALID_ARGUMENT saying what is wrong and what
 * to do (a key that does not match its certificate, a certificate not signed by the CA, a PSK
 * file that is empty, nothing to authenticate with).
 */
export function makeTlsConfig(mode: TlsMode, credentials: TlsCredentialBytes, verifyPeer: boolean): TlsServerConfig {
  const { caPem, certPem, keyPem, pskKeys } = credentials;
  if (certPem === null && pskKeys === null) {
    throw StorageError.invalidArgument('TLS needs credentials: give --tls-certificates DIR (with server-cert.pem and server-key.pem) or --tls-psk FILE');
  }
  if (certPem !== null && pskKeys !== null) {
    throw StorageError.invalidArgument('give either --tls-certificates or --tls-psk, not both (as with qemu, a server authenticates with certificates or with pre-shared keys)');
  }
  if (verifyPeer && caPem === null && pskKeys === null) {
    throw StorageError.invalidArgument('--tls-verify-peer needs the CA that signs client certificates: put it in ca-cert.pem in the --tls-certificates directory');
  }
  if (certPem !== null) checkCertificate(certPem, caPem);
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({
      minVersion: 'TLSv1.2',
      ...(caPem === null ? {} : { ca: caPem }),
      ...(certPem === null ? {} : { cert: certPem, key: keyPem! }),
      ...(pskKeys === null ? {} : { ciphers: pskCipherList() }),
    });
  } catch (error) {
    const detail = (error as Error).message;
    if (/key values mismatch/i.test(detail)) {
      throw StorageError.invalidArgument('server-key.pem is not the key of server-cert.pem: make the certificate from this key (certtool --generate-certificate --load-privkey server-key.pem ...), or put the matching key there', error);
    }
    throw StorageError.invalidArgument(`the TLS certificates or key could not be loaded (${detail}): check that they are PEM files`, error);
  }
  return { mode, secureContext, requestCert: caPem !== null, verifyPeer, pskKeys };
}

/** Node's default suites with the PSK ban lifted, the TLS 1.2 PSK suites first. */
function pskCipherList(): string {
  const defaults = tls.DEFAULT_CIPHERS.split(':').filter((cipher) => cipher !== '!PSK');
  return [...TLS12_PSK_CIPHERS, ...defaults].join(':');
}

/** The server certificate must parse, be in its validity period, and chain to the CA if one is given. */
function checkCertificate(certPem: Buffer, caPem: Buffer | null): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (error) {
    throw StorageError.invalidArgument(`server-cert.pem is not a PEM certificate (${(error as Error).message})`, error);
  }
  const nowMs = Date.now();
  if (Date.parse(cert.validTo) < nowMs) throw StorageError.invalidArgument(`server-cert.pem expired on ${cert.validTo}: make a new one`);
  if (caPem === null) return;
  let ca: X509Certificate;
  try {
    ca = new X509Certificate(caPem);
  } catch (error) {
    throw StorageError.invalidArgument(`ca-cert.pem is not a PEM certificate (${(error as Error).message})`, error);
  }
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    throw StorageError.invalidArgument(`server-cert.pem (${cert.subject.replace(/\n/g, ', ')}) is not signed by ca-cert.pem (${ca.subject.replace(/\n/g, ', ')}): clients that check it would refuse the server`);
  }
}

/**
 * Parses a psktool file: one `username:hexkey` per line (blank lines and `#` comments skipped).
 * Throws INVALID_ARGUMENT naming the line that is wrong.
 */
export function parsePskFile(text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const username = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw StorageError.invalidArgument(`PSK file line ${index + 1} is not "username:hexkey" (make the file with "psktool -u NAME -p FILE")`);
    }
    keys.set(username, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw StorageError.invalidArgument('the PSK file holds no keys: add one with "psktool -u NAME -p FILE"');
  return keys;
}

export interface TlsUpgrade {
  socket: tls.TLSSocket;
  /** The PSK username the client authenticated with, once the PSK callback found it. */
  pskIdentity: string | null;
}

/**
 * Wraps an accepted socket (after the STARTTLS ACK has been written) in a server-side TLS socket.
 * The TLS socket takes over the same file descriptor; the caller listens to it from now on.
 */
export function upgradeToTls(socket: Socket, config: TlsServerConfig): TlsUpgrade {
  const upgrade: TlsUpgrade = { socket: null as unknown as tls.TLSSocket, pskIdentity: null };
  const pskKeys = config.pskKeys;
  upgrade.socket = new tls.TLSSocket(socket, {
    isServer: true,
    secureContext: config.secureContext,
    requestCert: config.requestCert,
    // A client without any certificate is refused in the TLS handshake itself; one whose
    // certificate does not chain to the CA is refused by `peerIdentity` (Node's verify callback
    // lets it through and reports it as not authorized).
    rejectUnauthorized: config.verifyPeer && pskKeys === null,
    ...(pskKeys === null
      ? {}
      : {
          pskCallback: (_socket: tls.TLSSocket, identity: string) => {
            const key = pskKeys.get(identity) ?? null;
            if (key !== null) upgrade.pskIdentity = identity;
            return key;
          },
        }),
  } as tls.TLSSocketOptions);
  return upgrade;
}

/**
 * Who the client is, once its TLS handshake is done: the PSK username, or the common name of a
 * client certificate signed by the CA; null for an anonymous client. `refused` is set when
 * `verifyPeer` asks for an identity and the client has none (the message says why).
 */
export function peerIdentity(upgrade: TlsUpgrade, config: TlsServerConfig): { identity: string | null; refused: string | null } {
  if (upgrade.pskIdentity !== null) return { identity: upgrade.pskIdentity, refused: null };
  const socket = upgrade.socket;
  const certificate = socket.getPeerCertificate();
  const hasCertificate = certificate !== null && Object.keys(certificate).length > 0;
  const verifyError = hasCertificate ? chainError(socket) : 'no certificate';
  if (verifyError === null) {
    const commonName = certificate.subject?.CN;
    const identity = typeof commonName === 'string' && commonName !== '' ? commonName : null;
    if (identity === null && config.verifyPeer) return { identity, refused: 'client certificate has no subject common name' };
    return { identity, refused: null };
  }
  if (!config.verifyPeer) return { identity: null, refused: null };
  return { identity: null, refused: hasCertificate ? `client certificate not accepted: ${verifyError}` : 'client sent no certificate, and --tls-verify-peer requires one' };
}

/**
 * OpenSSL's verdict on the client's certificate chain against the CA, made during the handshake:
 * null when it chains, else the reason. `tls.Server` copies this into `socket.authorized`; a
 * TLSSocket made by hand (as STARTTLS needs) gets no such check, so it is read from the TLS handle
 * the way `tls.Server` does. Fails closed if this Node does not have it.
 */
function chainError(socket: tls.TLSSocket): string | null {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'this Node cannot report certificate verification';
  const error = handle.verifyError();
  return error === null || error === undefined ? null : (error.code ?? error.message);
}
