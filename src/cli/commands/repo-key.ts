// `lifeboat repo key list|add|remove`: the passphrases and key files that unlock a repository.

import { readFileSync } from 'node:fs';
import type { Command } from '../command.js';
import { UsageError, UserError } from '../command.js';
import { KeyFileError, validateKeyFile, type KeySecret } from '../../../replication/repository/keys.js';
import { KEY_HELP, TARGET_HELP, TARGET_OPTIONS, parse, printJson, withRepository } from './repository-cli.js';

export const repoKeyList: Command = {
  path: ['repo', 'key', 'list'],
  summary: 'list the keys (passphrases, key files) that unlock a repository',
  help: `Usage: lifeboat repo key list --target T [--password-file FILE | --key-file FILE] [--json]

Options:
${TARGET_HELP}
${KEY_HELP}
  --json                print the keys as JSON`,
  async run(argv) {
    const { values } = parse(argv, TARGET_OPTIONS);
    const keys = await withRepository(values, (repo) => repo.listKeys());
    if (values.json) {
      printJson(keys.map((k) => ({ id: k.id, kind: k.kind, createdAt: k.createdAt, host: k.host, label: k.label ?? null })));
    } else {
      for (const k of keys) process.stdout.write(`${k.id.slice(0, 8)}  ${k.kind.padEnd(10)}  ${k.createdAt}  ${k.host}${k.label ? `  ${k.label}` : ''}\n`);
    }
    return 0;
  },
};

function newSecret(values: { 'new-password-file'?: string; 'new-key-file'?: string }): KeySecret {
  if (Boolean(values['new-password-file']) === Boolean(values['new-key-file'])) {
    throw new UsageError('give exactly one of --new-password-file FILE or --new-key-file FILE');
  }
  const path = (values['new-password-file'] ?? values['new-key-file'])!;
  let contents: Buffer;
  try {
    contents = readFileSync(path);
  } catch (err) {
    throw new UserError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (values['new-key-file']) {
    try {
      validateKeyFile(contents, path);
    } catch (err) {
      if (err instanceof KeyFileError) throw new UserError(err.message);
      throw err;
    }
    return { keyFile: contents };
  }
  const passphrase = contents.toString('utf8').split(/\r?\n/)[0];
  if (!passphrase) throw new UserError(`password file ${path} is empty`);
  return { passphrase };
}

export const repoKeyAdd: Command = {
  path: ['repo', 'key', 'add'],
  summary: 'add a passphrase or key file that unlocks a repository',
  help: `Usage: lifeboat repo key add --target T [--password-file FILE | --key-file FILE]
                             (--new-password-file FILE | --new-key-file FILE) [--label TEXT] [--json]

Unlocks the repository with the current key and wraps its master key under a new one.

Options:
${TARGET_HELP}
${KEY_HELP}
  --new-password-file FILE  the new passphrase (first line of FILE)
  --new-key-file FILE       the new key file (at least 32 bytes)
  --label TEXT              a note stored with the key
  --json                    print the new key as JSON`,
  async run(argv) {
    const { values } = parse(argv, {
      ...TARGET_OPTIONS,
      'new-password-file': { type: 'string' },
      'new-key-file': { type: 'string' },
      label: { type: 'string' },
    });
    const secret = newSecret(values);
    const key = await withRepository(values, (repo) => repo.addKey(secret, values.label));
    if (values.json) printJson({ id: key.id, kind: key.kind });
    else process.stdout.write(`added ${key.kind} key ${key.id}\n`);
    return 0;
  },
};

export const repoKeyRemove: Command = {
  path: ['repo', 'key', 'remove'],
  summary: 'remove a key from a repository (never the last one)',
  help: `Usage: lifeboat repo key remove KEY-ID --target T [--password-file FILE | --key-file FILE]

Options:
${TARGET_HELP}
${KEY_HELP}`,
  async run(argv) {
    const { values, positionals } = parse(argv, TARGET_OPTIONS, true);
    if (positionals.length !== 1) throw new UsageError('give the id (or a unique prefix) of the key to remove; see lifeboat repo key list');
    await withRepository(values, (repo) => repo.removeKey(positionals[0]));
    if (!values.json) process.stdout.write(`removed key ${positionals[0]}\n`);
    else printJson({ removed: positionals[0] });
    return 0;
  },
};
