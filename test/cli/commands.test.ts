import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { commands } from '../../src/cli/commands/index.js';
import { projectRoot } from '../../src/util/project-root.js';

describe('the lifeboat command line', () => {
  it('lists every command, and each registry entry loads the command of that path with help', async () => {
    const paths = new Set<string>();
    for (const entry of commands) {
      const command = await entry.load();
      assert.deepEqual(command.path, entry.path, `index entry ${entry.path.join(' ')} loads ${command.path.join(' ')}`);
      assert.ok(command.summary.length > 0 && command.help.includes('Usage'), `${entry.path.join(' ')} has a summary and a Usage line`);
      const key = entry.path.join(' ');
      assert.ok(!paths.has(key), `${key} listed twice`);
      paths.add(key);
    }
  });

  it('answers --help for every command with exit status 0, and an unknown command with status 2', () => {
    const bin = join(projectRoot(), 'bin', 'lifeboat');
    const list = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8' });
    assert.equal(list.status, 0, list.stderr);
    for (const entry of commands) assert.match(list.stdout, new RegExp(`^  ${entry.path.join(' ')} `, 'm'));
    const help = spawnSync(process.execPath, [bin, 'vm', 'run', '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: lifeboat vm run/);
    const unknown = spawnSync(process.execPath, [bin, 'frobnicate'], { encoding: 'utf8' });
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  });

  it('prints its version (the package version) for --version', () => {
    const bin = join(projectRoot(), 'bin', 'lifeboat');
    const { version } = JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string };
    const printed = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
    assert.equal(printed.status, 0, printed.stderr);
    assert.equal(printed.stdout, `lifeboat ${version}\n`);
  });
});
