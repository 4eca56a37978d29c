// Where this host's catalog lives, and opening it for a command: `--catalog FILE`, else
// LIFEBOAT_CATALOG, else $LIFEBOAT_HOME/catalog.sqlite with LIFEBOAT_HOME defaulting to ~/.lifeboat
// (created on first use, mode 0700). See docs/catalog.md, "The catalog on a host".

import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { CatalogError, openCatalog, type Catalog } from '../../catalog/index.js';
import { UserError } from './command.js';

export const CATALOG_FILE_NAME = 'catalog.sqlite';

export const CATALOG_HELP = `  --catalog FILE        the catalog (or LIFEBOAT_CATALOG; default $LIFEBOAT_HOME/catalog.sqlite,
                        LIFEBOAT_HOME defaulting to ~/.lifeboat)`;

export const CATALOG_OPTIONS = { catalog: { type: 'string' } } as const;

export interface CatalogLocation {
  path: string;
  /** Given by --catalog (so a suggested command must repeat it); the environment is inherited anyway. */
  fromOption: boolean;
  /** The LIFEBOAT_HOME directory to create when the default path is used; null otherwise. */
  home: string | null;
}

export function lifeboatHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.LIFEBOAT_HOME || join(homedir(), '.lifeboat'));
}

export function catalogLocation(values: { catalog?: string }, env: NodeJS.ProcessEnv = process.env): CatalogLocation {
  if (values.catalog) return { path: resolve(values.catalog), fromOption: true, home: null };
  if (env.LIFEBOAT_CATALOG) return { path: resolve(env.LIFEBOAT_CATALOG), fromOption: false, home: null };
  const home = lifeboatHome(env);
  return { path: join(home, CATALOG_FILE_NAME), fromOption: false, home };
}

/**
 * Opens (creating, or migrating, if needed) the catalog. `mustExist`: a command that only reads the
 * catalog refuses to create an empty one. Every failure is a one-line UserError saying what to do.
 */
export function openCatalogAt(location: CatalogLocation, options: { mustExist?: boolean } = {}): Catalog {
  if (options.mustExist && !existsSync(location.path)) {
    throw new UserError(
      `there is no catalog at ${location.path} yet; 'lifeboat backup' writes it, and 'lifeboat catalog rebuild --target T' makes it from a repository`,
    );
  }
  if (location.home) {
    try {
      mkdirSync(location.home, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new UserError(
        `cannot create the Lifeboat home ${location.home} for the catalog: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; set LIFEBOAT_HOME or LIFEBOAT_CATALOG, or pass --catalog FILE`,
      );
    }
  }
  try {
    return openCatalog(location.path);
  } catch (err) {
    if (err instanceof CatalogError) throw new UserError(err.message);
    throw err;
  }
}
