// `lifeboat repo init`: creates a repository on a target.

import { randomBytes } from 'node:crypto';
import { openSync, writeSync, closeSync, existsSync } from 'node:fs';
import type { Command } from '../command.js';
import { UsageError, UserError } from '../command.js';
import { DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION, DEFAULT_PACK_SIZE } from '../../../replication/repository/constants.js';
import { Repository } from '../../../replication/repository/repository.js';
import type { KeySecret } from '../../../replication/repository/keys.js';
import {
  KEY_HELP,
  TARGET_HELP,
  TARGET_OPTIONS,
  formatBytes,
  openTargetFromArgs,
  parse,
  parseSize,
  printJson,
  readSecret,
  userErrors,
} from './repository-cli.js';

const help = `Usage: lifeboat repo init --target T (--password-file FILE | --key-file FILE | --no-encryption)
                          [--chunk-size SIZE] [--compression lz4|brotli-Q|none] [--json]

Create a repository. Encrypted repositories (AES-256-GCM, keyed chunk ids) need a passphrase
(--password-file or LIFEBOAT_PASSWORD) or a key file; a key file that does not exist yet is created
with 32 random bytes (keep a copy: without it the repository cannot be read). An unencrypted
repository must be asked for with --no-encryption.

Options:
${TARGET_HELP}
${KEY_HELP}
  --no-encryption       store chunks unencrypted (plain SHA-256 ids)
  --chunk-size SIZE     fixed chunk size, a power of two from 4K to 16M (default ${formatBytes(DEFAULT_CHUNK_SIZE)})
  --pack-size SIZE      pack size to aim for (default ${formatBytes(DEFAULT_PACK_SIZE)})
  --compression C       lz4 (fast restores), brotli-0 ... brotli-11 (fewer bytes, slower) or none
                        (default ${DEFAULT_COMPRESSION})
  --json                print the result as JSON`;

/** Creates a new key file with 32 random bytes (base64), refusing to overwrite anything. */
function createKeyFile(path: string): Buffer {
  const contents = Buffer.from(randomBytes(32).toString('base64') + '\n');
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    throw new UserError(`cannot create key file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    writeSync(fd, contents);
  } finally {
    closeSync(fd);
  }
  return contents;
}

export const repoInit: Command = {
  path: ['repo', 'init'],
  summary: 'create a repository on a target (local directory, S3, remote site)',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      ...TARGET_OPTIONS,
      'no-encryption': { type: 'boolean', default: false },
      'chunk-size': { type: 'string' },
      'pack-size': { type: 'string' },
      compression: { type: 'string' },
    });
    let secret: KeySecret | null;
    let createdKeyFile = false;
    if (values['no-encryption']) {
      if (values['password-file'] || values['key-file']) throw new UsageError('--no-encryption cannot be combined with --password-file or --key-file');
      secret = null;
    } else if (values['key-file'] && !existsSync(values['key-file'])) {
      secret = { keyFile: createKeyFile(values['key-file']) };
      createdKeyFile = true;
    } else {
      secret = readSecret(values);
      if (!secret) {
        throw new UsageError('give --password-file FILE, LIFEBOAT_PASSWORD or --key-file FILE for an encrypted repository, or --no-encryption');
      }
    }
    const target = await openTargetFromArgs(values);
    try {
      // An S3 target can create its bucket; other targets create their location on the first write.
      const withBucket = target as { ensureBucket?: () => Promise<void> };
      if (typeof withBucket.ensureBucket === 'function') await userErrors(() => withBucket.ensureBucket!());
      const repo = await userErrors(() =>
        Repository.init(target, {
          secret,
          chunkSize: parseSize('chunk-size', values['chunk-size']),
          packSize: parseSize('pack-size', values['pack-size']),
          compression: values.compression,
        }),
      );
      const c = repo.config;
      if (values.json) {
        printJson({ repository: c.id, target: target.description, chunkSize: c.chunkSize, packSize: c.packSize, compression: c.compression, encryption: c.encryption, createdKeyFile });
      } else {
        process.stdout.write(
          `created repository ${c.id} at ${target.description} (chunks ${formatBytes(c.chunkSize)}, ${c.compression}, ${c.encryption === 'none' ? 'unencrypted' : c.encryption})\n`,
        );
        if (createdKeyFile) process.stdout.write(`created key file ${values['key-file']}: keep a copy somewhere safe\n`);
      }
      return 0;
    } finally {
      await target.close().catch(() => undefined);
    }
  },
};
