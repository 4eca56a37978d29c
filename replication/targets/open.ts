// Turns a target spec, as users write it, into a Target:
//   /path/to/dir, ./dir, file:PATH          a local directory
//   s3://BUCKET[/PREFIX]                    an S3-compatible bucket (endpoint and credentials from
//                                           options, else LIFEBOAT_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
//                                           AWS_SECRET_ACCESS_KEY, AWS_REGION)
//   lifeboat://HOST:PORT/REPO               a remote Lifeboat site over https (`lifeboat site serve`)
//   https://HOST:PORT/REPO, http://...      the same, scheme explicit
// The S3 and site clients are loaded only when used.

import { readFileSync } from 'node:fs';
import type { Target } from '../target.js';
import { createLocalTarget } from './local.js';

export interface OpenTargetOptions {
  /** Environment to read defaults from (process.env when omitted). */
  env?: NodeJS.ProcessEnv;
  s3?: {
    endpoint?: string;
    region?: string;
    forcePathStyle?: boolean;
    accessKeyId?: string;
    secretAccessKey?: string;
  };
  site?: {
    /** Shared secret for the site's API (else LIFEBOAT_SITE_SECRET). */
    secret?: string;
    /** PEM CA certificate(s) to trust for https (else the file named by LIFEBOAT_SITE_CA). */
    ca?: string | Buffer;
  };
}

/** A target spec that cannot be understood; the message says what forms are accepted. */
export class TargetSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TargetSpecError';
  }
}

export type TargetKind = 'local' | 's3' | 'site';

export interface ParsedTargetSpec {
  kind: TargetKind;
  /** local: the directory; s3: the bucket; site: the URL. */
  location: string;
  prefix?: string;
}

const SPEC_FORMS = 'a directory path, file:PATH, s3://BUCKET[/PREFIX], lifeboat://HOST:PORT/REPO or https://HOST:PORT/REPO';

export function parseTargetSpec(spec: string): ParsedTargetSpec {
  if (!spec) throw new TargetSpecError(`empty target; give ${SPEC_FORMS}`);
  if (spec.startsWith('file:')) {
    const path = spec.slice('file:'.length).replace(/^\/\/(?=\/)/, '');
    if (!path) throw new TargetSpecError(`target '${spec}' names no directory`);
    return { kind: 'local', location: path };
  }
  if (spec.startsWith('s3://')) {
    const rest = spec.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new TargetSpecError(`'${bucket}' in target '${spec}' is not a valid S3 bucket name`);
    }
    return { kind: 's3', location: bucket, ...(prefix ? { prefix } : {}) };
  }
  if (spec.startsWith('lifeboat://') || spec.startsWith('https://') || spec.startsWith('http://')) {
    let url: URL;
    try {
      url = new URL(spec.replace(/^lifeboat:/, 'https:'));
    } catch {
      throw new TargetSpecError(`target '${spec}' is not a valid URL`);
    }
    if (!url.hostname) throw new TargetSpecError(`target '${spec}' names no host`);
    return { kind: 'site', location: url.origin, prefix: url.pathname.replace(/^\/+|\/+$/g, '') };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) {
    throw new TargetSpecError(`unknown kind of target '${spec}'; give ${SPEC_FORMS}`);
  }
  return { kind: 'local', location: spec };
}

export async function openTarget(spec: string, options: OpenTargetOptions = {}): Promise<Target> {
  const env = options.env ?? process.env;
  const parsed = parseTargetSpec(spec);
  switch (parsed.kind) {
    case 'local':
      return createLocalTarget({ path: parsed.location });
    case 's3': {
      const { createS3Target } = await import('./s3.js');
      const endpoint = options.s3?.endpoint ?? env.LIFEBOAT_S3_ENDPOINT;
      const accessKeyId = options.s3?.accessKeyId ?? env.AWS_ACCESS_KEY_ID;
      const secretAccessKey = options.s3?.secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY;
      const region = options.s3?.region ?? env.AWS_REGION;
      return createS3Target({
        bucket: parsed.location,
        ...(parsed.prefix ? { prefix: parsed.prefix } : {}),
        ...(endpoint ? { endpoint } : {}),
        ...(region ? { region } : {}),
        ...(options.s3?.forcePathStyle !== undefined ? { forcePathStyle: options.s3.forcePathStyle } : {}),
        ...(accessKeyId ? { accessKeyId } : {}),
        ...(secretAccessKey ? { secretAccessKey } : {}),
      });
    }
    case 'site': {
      const { createSiteTarget } = await import('./site-client.js');
      const secret = options.site?.secret ?? env.LIFEBOAT_SITE_SECRET;
      const ca = options.site?.ca ?? (env.LIFEBOAT_SITE_CA ? readFileSync(env.LIFEBOAT_SITE_CA) : undefined);
      return createSiteTarget({
        url: parsed.location,
        ...(parsed.prefix ? { repo: parsed.prefix } : {}),
        ...(secret ? { secret } : {}),
        ...(ca ? { ca } : {}),
      });
    }
  }
}
