// Mutual TLS: the site admits only clients with a certificate signed by its client CA. The CA and
// certificates are made fresh with openssl for each run.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthError, type Target } from '../../replication/target.js';
import { createSiteTarget } from '../../replication/targets/site-client.js';
import { startSiteServer, type SiteServer } from '../../src/site/server.js';

interface Pem {
  cert: Buffer;
  key: Buffer;
}

/** A throwaway CA and certificates signed by it (ECDSA P-256, valid one day). */
function makePki(dir: string) {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const newCa = (name: string) => {
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`);
  };
  const issue = (name: string, ca: string, ext: string): Pem => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
    return { cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)) };
  };
  newCa('site-ca');
  newCa('rogue-ca');
  return {
    ca: readFileSync(join(dir, 'site-ca.crt')),
    server: issue('site-server', 'site-ca', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'),
    client: issue('agent-a', 'site-ca', 'extendedKeyUsage=clientAuth\n'),
    rogueClient: issue('agent-rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth\n'),
  };
}

describe('remote site: mutual TLS', () => {
  let pkiDir: string;
  let pki: ReturnType<typeof makePki>;
  let root: string;
  let server: SiteServer;
  const targets: Target[] = [];
  const target = (options: Partial<Parameters<typeof createSiteTarget>[0]>): Target => {
    const t = createSiteTarget({ url: server.url, retries: 0, ...options });
    targets.push(t);
    return t;
  };

  before(() => {
    pkiDir = mkdtempSync(join(tmpdir(), 'lifeboat-pki-'));
    pki = makePki(pkiDir);
  });
  after(() => rmSync(pkiDir, { recursive: true, force: true }));

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'lifeboat-site-mtls-'));
    server = await startSiteServer({ repoRoot: root, tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca } });
  });
  afterEach(async () => {
    for (const t of targets.splice(0)) await t.close();
    await server.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('a client with a certificate from the site CA stores and reads objects over HTTPS', async () => {
    assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const t = target({ ca: pki.ca, cert: pki.client.cert, key: pki.client.key, resumableThreshold: 64 * 1024, partSize: 16 * 1024 });
    const body = Buffer.alloc(200 * 1024, 0xab);
    await t.put('data/tls', body);
    assert.ok((await t.get('data/tls')).equals(body));
  });

  it('a client without a certificate is refused with 401 and nothing is written', async () => {
    const t = target({ ca: pki.ca });
    await assert.rejects(t.put('data/x', Buffer.from('payload')), (err: Error) => {
      assert.ok(err instanceof AuthError, String(err));
      assert.match(err.message, /refused the request: a client certificate signed by the site's client CA is required/);
      return true;
    });
    assert.deepEqual(readdirSync(join(root, 'repos')), []);
  });

  it('a client whose certificate another CA signed is refused', async () => {
    const t = target({ ca: pki.ca, cert: pki.rogueClient.cert, key: pki.rogueClient.key });
    await assert.rejects(t.put('data/x', Buffer.from('payload')), AuthError);
    assert.deepEqual(readdirSync(join(root, 'repos')), []);
  });

  it('a client that does not trust the site certificate refuses to talk to it', async () => {
    const t = target({ cert: pki.client.cert, key: pki.client.key });
    await assert.rejects(t.put('data/x', Buffer.from('payload')), (err: Error) => err instanceof AuthError && /TLS certificate is not trusted/.test(err.message));
  });
});
