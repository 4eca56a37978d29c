// The site's secret file: one shared secret per line (several during a rotation), '#' comments.

import { readFileSync, statSync } from 'node:fs';
import { SITE_MIN_SECRET_LENGTH } from '../../replication/targets/site-client.js';

export class SiteConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SiteConfigError';
  }
}

export function loadSecretFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new SiteConfigError(`cannot read secret file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const secrets = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  if (secrets.length === 0) {
    throw new SiteConfigError(`secret file ${path} holds no secret; put one on a line (e.g. openssl rand -hex 32 > ${path})`);
  }
  for (const [i, s] of secrets.entries()) {
    if (s.length < SITE_MIN_SECRET_LENGTH || /\s/.test(s)) {
      throw new SiteConfigError(
        `secret ${i + 1} in ${path} is too short or contains spaces (need at least ${SITE_MIN_SECRET_LENGTH} characters; e.g. openssl rand -hex 32 > ${path})`,
      );
    }
  }
  if ((statSync(path).mode & 0o077) !== 0) {
    process.emitWarning(`secret file ${path} is readable by other users; chmod 600 it`);
  }
  return secrets;
}
