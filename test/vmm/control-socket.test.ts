// Steering a running VMM over its control socket, as an operator does with `lifeboat vm status|pause|
// resume|stop --api-sock PATH`, and as a program does with raw JSON lines.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { requireKvm, runLifeboat, tempDir, tinyKernel, VmProcess, X86 } from '../helpers/vmm.js';

async function rawRequest(path: string, line: string): Promise<Record<string, unknown>> {
  return await new Promise((resolve, reject) => {
    const c = createConnection(path);
    let text = '';
    c.setEncoding('utf8');
    c.on('connect', () => c.write(line + '\n'));
    c.on('data', (s: string) => {
      text += s;
      if (text.includes('\n')) {
        c.end();
        resolve(JSON.parse(text.slice(0, text.indexOf('\n'))) as Record<string, unknown>);
      }
    });
    c.on('error', reject);
  });
}

describe('VMM control socket', function () {
  this.timeout(60_000);
  let dir: ReturnType<typeof tempDir>;
  let kernel: string;

  before(() => {
    requireKvm();
    dir = tempDir();
    kernel = join(dir.path, 'spin.bin');
    writeFileSync(kernel, tinyKernel([...X86.print('up\n'), ...X86.hang]));
  });
  after(() => dir.remove());

  it('reports status, pauses, resumes, and stops the VM with the status asked for', async () => {
    const sock = join(dir.path, 'vm.sock');
    const disk = join(dir.path, 'd.img');
    writeFileSync(disk, Buffer.alloc(1 << 20));
    const vm = new VmProcess(['--kernel', kernel, '--api-sock', sock, '--vcpus', '2', '--mem', '64', '--disk', `${disk},ro`]);
    try {
      await vm.waitFor('up\n');
      const status = await runLifeboat(['vm', 'status', '--api-sock', sock, '--json']);
      assert.equal(status.code, 0, status.stderr);
      const s = JSON.parse(status.stdout) as Record<string, unknown>;
      assert.equal(s.ok, true);
      assert.equal(s.state, 'running');
      assert.equal(s.vcpus, 2);
      assert.equal(s.memoryBytes, 64 * 1024 * 1024);
      assert.deepEqual(s.disks, [{ path: disk, readOnly: true, sizeBytes: 1 << 20 }]);
      assert.equal(typeof s.uptimeSeconds, 'number');

      const human = await runLifeboat(['vm', 'status', '--api-sock', sock]);
      assert.match(human.stdout, /^state running$/m);

      assert.equal((await runLifeboat(['vm', 'pause', '--api-sock', sock])).code, 0);
      assert.equal((await rawRequest(sock, '{"op":"status"}')).state, 'paused');
      assert.equal((await runLifeboat(['vm', 'resume', '--api-sock', sock])).code, 0);
      assert.equal((await rawRequest(sock, '{"op":"status"}')).state, 'running');

      assert.deepEqual(await rawRequest(sock, '{"op":"reboot"}'), { ok: false, error: 'unknown op "reboot": use status, pause, resume or stop' });
      assert.equal((await rawRequest(sock, 'status please')).ok, false);

      const stop = await runLifeboat(['vm', 'stop', '--api-sock', sock, '--status', '7']);
      assert.equal(stop.code, 0, stop.stderr);
      const exit = await vm.wait(30_000);
      assert.equal(exit.code, 7, exit.stderr);
    } finally {
      vm.kill();
    }
  });

  it('a client of a socket nobody serves gets one clear line', async () => {
    const r = await runLifeboat(['vm', 'status', '--api-sock', join(dir.path, 'nobody.sock')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^lifeboat vm status: cannot reach the VMM on .*nobody\.sock: no such socket\n$/);
  });

  it('refuses a control socket path that is a regular file, without starting the VM', async () => {
    const path = join(dir.path, 'not-a-socket');
    writeFileSync(path, 'keep me');
    const vm = new VmProcess(['--kernel', kernel, '--api-sock', path]);
    const exit = await vm.wait(30_000);
    assert.equal(exit.code, 1);
    assert.match(exit.stderr, /control socket path .*not-a-socket exists and is not a socket/);
  });
});
