// Large objects go to the site through resumable upload sessions. These stories cut the connection
// for real (a TCP proxy between client and site drops both sockets after N bytes) and check that the
// upload resumes from the site's committed offset instead of starting over.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Target } from '../../replication/target.js';
import { createSiteTarget, sha256Hex } from '../../replication/targets/site-client.js';
import { startSiteServer, type SiteServer } from '../../src/site/server.js';

const SECRET = 'site-resume-secret-0123456789abcdef0123456789';
const MiB = 1024 * 1024;

/**
 * A TCP proxy that forwards client -> site bytes and, once armed, drops the connection (destroys both
 * sockets) after exactly `cutAfter` more bytes. Counts what the client sent before and after the cut.
 */
class ConnectionDroppingProxy {
  readonly server = net.createServer((client) => this.connect(client));
  upstreamPort = 0;
  private armedBytesLeft: number | null = null;
  cuts = 0;
  bytesBeforeCut = 0;
  bytesAfterCut = 0;
  onCut: () => void = () => {};

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  dropAfter(bytes: number): void {
    this.armedBytesLeft = bytes;
  }

  private connect(client: net.Socket): void {
    const upstream = net.connect(this.upstreamPort, '127.0.0.1');
    const drop = () => {
      client.destroy();
      upstream.destroy();
    };
    upstream.on('error', drop);
    client.on('error', drop);
    upstream.on('close', drop);
    client.on('close', drop);
    upstream.pipe(client);
    client.on('data', (data: Buffer) => {
      if (this.armedBytesLeft !== null && data.length >= this.armedBytesLeft) {
        const last = data.subarray(0, this.armedBytesLeft);
        this.bytesBeforeCut += last.length;
        this.armedBytesLeft = null;
        this.cuts++;
        this.onCut();
        upstream.write(last, drop);
        return;
      }
      if (this.armedBytesLeft !== null) this.armedBytesLeft -= data.length;
      if (this.cuts === 0) this.bytesBeforeCut += data.length;
      else this.bytesAfterCut += data.length;
      upstream.write(data);
    });
  }

  async close(): Promise<void> {
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe('remote site: resumable uploads', () => {
  let root: string;
  let server: SiteServer;
  let proxy: ConnectionDroppingProxy;
  let target: Target;
  const partSize = 256 * 1024;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'lifeboat-site-resume-'));
    server = await startSiteServer({ repoRoot: root, secrets: [SECRET] });
    proxy = new ConnectionDroppingProxy();
    proxy.upstreamPort = server.port;
    const url = await proxy.listen();
    target = createSiteTarget({ url, secret: SECRET, resumableThreshold: MiB, partSize, retryBaseMs: 20 });
  });
  afterEach(async () => {
    await target.close();
    await server.close();
    await proxy.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('an upload cut mid-stream resumes from the committed offset; the object is bit-exact and only the rest is sent again', async () => {
    const body = randomBytes(3 * MiB);
    let committedAtCut = -1;
    proxy.onCut = () => (committedAtCut = server.stats.uploads.committedBytes);
    proxy.dropAfter(Math.floor(1.6 * MiB)); // in the middle of the seventh part

    await target.put('packs/big', body);

    assert.equal(proxy.cuts, 1, 'the connection was really dropped once');
    assert.ok(committedAtCut > 0 && committedAtCut < body.length, `committed at cut: ${committedAtCut}`);
    assert.equal(committedAtCut % partSize, 0);
    const appends = server.stats.uploads.appends;
    assert.equal(appends.reduce((n, a) => n + a.length, 0), body.length, 'every byte was committed exactly once');
    const firstAfterCut = appends.find((a) => a.offset >= committedAtCut);
    assert.equal(firstAfterCut?.offset, committedAtCut, 'the upload continued at the committed offset');
    const remainder = body.length - committedAtCut;
    assert.ok(proxy.bytesAfterCut >= remainder, `sent after the cut: ${proxy.bytesAfterCut}`);
    assert.ok(proxy.bytesAfterCut < remainder + 64 * 1024, `only the remainder (${remainder}) plus requests' headers was sent again, not ${proxy.bytesAfterCut}`);
    assert.equal(server.stats.uploads.receivedBytes, body.length, 'the cut part was never counted as received');

    const stored = await target.get('packs/big');
    assert.equal(sha256Hex(stored), sha256Hex(body));
    assert.deepEqual(readdirSync(join(root, 'uploads')).filter((f) => !f.endsWith('.tmp')).length, 1, 'only the committed session tombstone remains');
  });

  it('the site restarts during an upload: the committed part survives on disk and the client finishes the upload', async () => {
    const body = randomBytes(2 * MiB + 12345);
    let restarted: Promise<void> | undefined;
    let committedAtCut = -1;
    proxy.onCut = () => {
      committedAtCut = server.stats.uploads.committedBytes;
      restarted = (async () => {
        await server.close();
        server = await startSiteServer({ repoRoot: root, secrets: [SECRET] });
        proxy.upstreamPort = server.port;
      })();
    };
    proxy.dropAfter(Math.floor(1.2 * MiB));

    await target.put('packs/restart', body);
    await restarted;

    assert.ok(committedAtCut > 0);
    const appendsAfterRestart = server.stats.uploads.appends;
    assert.equal(appendsAfterRestart[0].offset, committedAtCut, 'the new server process continued from the offset the old one made durable');
    assert.equal(appendsAfterRestart.reduce((n, a) => n + a.length, 0), body.length - committedAtCut);
    assert.ok((await target.get('packs/restart')).equals(body));
  });

  it('a create-only upload of a key that exists is refused before any data is sent', async () => {
    await target.put('packs/taken', Buffer.from('small'));
    await assert.rejects(target.put('packs/taken', randomBytes(2 * MiB), { ifNoneMatch: true }), /already exists/);
    assert.equal(server.stats.uploads.receivedBytes, 0);
    assert.equal((await target.get('packs/taken')).toString(), 'small');
  });
});
