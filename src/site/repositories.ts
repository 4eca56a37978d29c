// The repositories a site stores, one folder each under <repo-root>/repos/, each served through a
// repository Target (the local-directory target).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_NAME_PATTERN, objectKeyProblem } from '../../replication/targets/site-client.js';
import type { Target } from '../../replication/target.js';
import { createLocalTarget } from '../../replication/targets/local.js';
import { SiteHttpError } from './http-error.js';

export type OpenRepository = (dir: string) => Target | Promise<Target>;

/** The default storage of a repository folder: the local-directory target (atomic, fsynced puts). */
export const openLocalRepository: OpenRepository = (dir) => createLocalTarget(dir);

export class Repositories {
  private readonly open = new Map<string, Promise<Target>>();

  constructor(
    private readonly root: string,
    private readonly openRepository: OpenRepository,
  ) {
    mkdirSync(join(root, 'repos'), { recursive: true });
  }

  /** The Target of repository `name`, created on first use. */
  get(name: string): Promise<Target> {
    if (!REPO_NAME_PATTERN.test(name)) {
      throw new SiteHttpError(400, 'bad-repo', `repository name '${name}' is invalid: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    }
    let target = this.open.get(name);
    if (!target) {
      const dir = join(this.root, 'repos', name);
      mkdirSync(dir, { recursive: true });
      target = Promise.resolve(this.openRepository(dir));
      target.catch(() => this.open.delete(name));
      this.open.set(name, target);
    }
    return target;
  }

  async close(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    await Promise.allSettled(all.map(async (t) => (await t).close()));
  }
}

/** Object keys are relative slash-separated paths: no empty, '.' or '..' segments, no NUL or backslash. */
export function checkObjectKey(key: string): string {
  const problem = objectKeyProblem(key);
  if (problem) throw new SiteHttpError(400, 'bad-key', `object key '${key.slice(0, 200)}' is invalid: ${problem}`);
  return key;
}
