import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The folder holding Lifeboat's package.json, found from this file whatever folder it was compiled into. */
export function projectRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'guest'))) return (cached = dir);
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the Lifeboat project root above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}
