// The repository suite against a local directory target. Retention locks are immutable files
// (chattr +i), which need CAP_LINUX_IMMUTABLE: the lock test fails loudly without it.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createLocalTarget, LocalTarget } from '../../replication/targets/local.js';
import type { Target } from '../../replication/target.js';
import { describeRepositorySuite } from './repository-suite.js';

function pathOf(target: Target, key: string): string {
  return join((target as LocalTarget).description.slice('file:'.length), ...key.split('/'));
}

function chattr(flag: '+i' | '-i', path: string): void {
  try {
    execFileSync('chattr', [flag, path], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`chattr ${flag} ${path} failed (immutable files stand in for retention locks and need root): ${(err as { stderr?: Buffer }).stderr?.toString().trim()}`);
  }
}

describeRepositorySuite('a local directory', {
  async make() {
    return createLocalTarget(join(mkdtempSync(join(tmpdir(), 'lifeboat-local-target-')), 'repo'));
  },
  async lock(target, key) {
    chattr('+i', pathOf(target, key));
  },
  async unlock(target, key) {
    chattr('-i', pathOf(target, key));
  },
  async destroy(target) {
    rmSync(dirname(pathOf(target, 'x')), { recursive: true, force: true });
  },
});
