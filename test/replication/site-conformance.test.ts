// The remote-site target runs the suites every target runs: the Target conformance suite and the whole
// repository suite, against a real `site serve` server on 127.0.0.1 storing into a real folder.
// Retention locks are immutable files on the site's disk (chattr +i, needs root, like the local target).

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Target } from '../../replication/target.js';
import { createSiteTarget } from '../../replication/targets/site-client.js';
import { startSiteServer, type SiteServer } from '../../src/site/server.js';
import { describeRepositorySuite } from './repository-suite.js';
import { describeTargetConformance } from './target-conformance.js';

const SECRET = 'site-conformance-secret-0123456789abcdef01234';

describe('remote site', function () {
  let root: string;
  let server: SiteServer;
  const repoOf = new Map<Target, string>();

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'lifeboat-site-suite-'));
    server = await startSiteServer({ repoRoot: root, secrets: [SECRET] });
  });
  after(async () => {
    await server.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** A fresh repository on the shared site; parts of 1 MiB above 2 MiB so that uploads really are resumable sessions. */
  const freshTarget = async (): Promise<Target> => {
    const repo = `suite-${randomBytes(6).toString('hex')}`;
    const target = createSiteTarget({ url: server.url, secret: SECRET, repo, resumableThreshold: 2 * 1024 * 1024, partSize: 1024 * 1024 });
    repoOf.set(target, repo);
    return target;
  };
  const pathOnSite = (target: Target, key: string) => join(root, 'repos', repoOf.get(target)!, ...key.split('/'));
  const chattr = (flag: '+i' | '-i', path: string) => {
    try {
      execFileSync('chattr', [flag, path], { stdio: 'pipe' });
    } catch (err) {
      throw new Error(`chattr ${flag} ${path} failed (immutable files stand in for retention locks and need root): ${(err as { stderr?: Buffer }).stderr?.toString().trim()}`);
    }
  };

  describeTargetConformance('remote site', freshTarget);

  describeRepositorySuite('a remote site', {
    make: freshTarget,
    async lock(target, key) {
      chattr('+i', pathOnSite(target, key));
    },
    async unlock(target, key) {
      chattr('-i', pathOnSite(target, key));
    },
    async destroy(target) {
      rmSync(join(root, 'repos', repoOf.get(target)!), { recursive: true, force: true });
      repoOf.delete(target);
    },
  });
});
