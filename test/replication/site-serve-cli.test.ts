// `lifeboat site serve` as an operator runs it: a real process, a real port, a real folder.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createSiteTarget } from '../../replication/targets/site-client.js';

// The CLI entry compiled next to this test (dist/, dist-NAME/...), so the test runs the code it was built with.
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const SECRET = 'cli-site-secret-0123456789abcdef0123456789ab';

function lifeboat(args: string[]): ChildProcess {
  return spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: stream });
    lines.once('line', (line) => {
      resolve(line);
      lines.close();
    });
    lines.once('close', () => reject(new Error('no output')));
  });
}

function finished(child: ChildProcess): Promise<{ code: number | null; stderr: string; stdout: string }> {
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  child.stdout!.on('data', (d: Buffer) => (stdout += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr, stdout })));
}

describe('lifeboat site serve', () => {
  let dir: string;
  let secretFile: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lifeboat-site-cli-'));
    secretFile = join(dir, 'site.secret');
    writeFileSync(secretFile, `# agents at the main site\n${SECRET}\n`, { mode: 0o600 });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('prints the address it listens on, serves signed requests, and stops cleanly on SIGTERM', async () => {
    const child = lifeboat(['site', 'serve', '--listen', '127.0.0.1:0', '--repo-root', join(dir, 'repos'), '--secret-file', secretFile]);
    const done = finished(child);
    try {
      const line = await firstLine(child.stdout!);
      const m = line.match(/^lifeboat site: listening on (http:\/\/127\.0\.0\.1:\d+) \(repositories in .*; auth: secret\)$/);
      assert.ok(m, line);
      const target = createSiteTarget({ url: m[1], secret: SECRET, repo: 'vm-hosts' });
      await target.put('config', Buffer.from('{"version":1}'));
      assert.equal((await target.get('config')).toString(), '{"version":1}');
      await target.close();
    } finally {
      child.kill('SIGTERM');
    }
    const { code } = await done;
    assert.equal(code, 0);
  });

  it('refuses to start without a secret or client CA, with one line saying what to add', async () => {
    const { code, stderr, stdout } = await finished(lifeboat(['site', 'serve', '--listen', '127.0.0.1:0', '--repo-root', dir]));
    assert.equal(code, 1);
    assert.equal(stdout, '');
    assert.equal(
      stderr,
      'lifeboat site serve: refusing to start without authentication: give --secret-file FILE (a shared secret) and/or --client-ca FILE (mutual TLS)\n',
    );
  });

  it('refuses a secret too short to be safe', async () => {
    writeFileSync(secretFile, 'hunter2\n');
    const { code, stderr } = await finished(lifeboat(['site', 'serve', '--listen', '127.0.0.1:0', '--repo-root', dir, '--secret-file', secretFile]));
    assert.equal(code, 1);
    assert.match(stderr, /^lifeboat site serve: secret 1 in .* is too short .*openssl rand -hex 32.*\n$/);
  });

  it('exits non-zero with a clear message when the port is taken', async () => {
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const { code, stderr } = await finished(lifeboat(['site', 'serve', '--listen', `127.0.0.1:${port}`, '--repo-root', dir, '--secret-file', secretFile]));
      assert.equal(code, 1);
      assert.equal(stderr, `lifeboat site serve: cannot listen on 127.0.0.1:${port}: the address is already in use; stop the other process or choose another --listen port\n`);
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it('rejects a malformed --listen as a usage error', async () => {
    const { code, stderr } = await finished(lifeboat(['site', 'serve', '--listen', 'localhost', '--repo-root', dir, '--secret-file', secretFile]));
    assert.equal(code, 2);
    assert.match(stderr, /--listen 'localhost' is not HOST:PORT/);
  });
});
