// How bin/lifeboat starts Node, for the benchmark scripts: they run a build's src/cli/main.js with the
// same Node options a user's `lifeboat` gets from bin/lifeboat's `#!/usr/bin/env -S node OPTIONS` line
// (the one home of those options), so that what they time is what a user runs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The Node options on bin/lifeboat's first line under `root` (none if it has no `env -S node` line). */
export function lifeboatNodeOptions(root: string): string[] {
  const first = readFileSync(join(root, 'bin', 'lifeboat'), 'utf8').split('\n', 1)[0]!;
  const m = /^#!\S*env -S node((?:\s+\S+)*)\s*$/.exec(first);
  return m ? m[1]!.trim().split(/\s+/).filter(Boolean) : [];
}
