import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadSecretFile, SiteConfigError } from '../../site/secrets.js';
import { startSiteServer } from '../../site/server.js';
import { UsageError, UserError, type Command } from '../command.js';

const help = `Usage: lifeboat site serve --listen HOST:PORT --repo-root DIR [--secret-file FILE]
                           [--tls-cert FILE --tls-key FILE [--client-ca FILE]] [--json]

Serve repositories to Lifeboat agents at other sites (the "site" target). Objects of each repository
are stored under DIR/repos/NAME/; resumable uploads in progress under DIR/uploads/.

Every request must be authenticated; the server refuses to start without one of:
  --secret-file FILE   shared secrets, one per line (at least 32 characters; e.g. openssl rand -hex 32).
                       Clients sign each request with it; the secret never crosses the network.
  --client-ca FILE     mutual TLS: clients must present a certificate signed by this CA (PEM).
                       Needs --tls-cert and --tls-key.
Both may be given; then both are required of every client.

Options:
  --listen HOST:PORT   address to listen on (PORT 0 picks a free port)
  --repo-root DIR      folder holding the repositories (created if missing)
  --tls-cert FILE      serve HTTPS with this certificate (PEM) ...
  --tls-key FILE       ... and this private key (PEM)
  --json               print the listening line and logs as JSON

Prints one line with the address it listens on, then serves until SIGINT or SIGTERM.`;

export const siteServeCommand: Command = {
  path: ['site', 'serve'],
  summary: 'serve repositories to other sites over authenticated HTTP(S)',
  help,
  async run(argv) {
    let values;
    try {
      ({ values } = parseArgs({
        args: argv,
        options: {
          listen: { type: 'string' },
          'repo-root': { type: 'string' },
          'secret-file': { type: 'string' },
          'tls-cert': { type: 'string' },
          'tls-key': { type: 'string' },
          'client-ca': { type: 'string' },
          json: { type: 'boolean', default: false },
        },
        strict: true,
        allowPositionals: false,
      }));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    if (!values.listen) throw new UsageError('missing --listen HOST:PORT');
    if (!values['repo-root']) throw new UsageError('missing --repo-root DIR');
    const { host, port } = parseListen(values.listen);
    if (Boolean(values['tls-cert']) !== Boolean(values['tls-key'])) throw new UsageError('--tls-cert and --tls-key go together');
    if (values['client-ca'] && !values['tls-cert']) throw new UsageError('--client-ca (mutual TLS) needs --tls-cert and --tls-key');
    if (!values['secret-file'] && !values['client-ca']) {
      throw new UserError('refusing to start without authentication: give --secret-file FILE (a shared secret) and/or --client-ca FILE (mutual TLS)');
    }

    const json = values.json;
    const repoRoot = resolve(values['repo-root']);
    try {
      const secrets = values['secret-file'] ? loadSecretFile(values['secret-file']) : [];
      const tls = values['tls-cert']
        ? {
            cert: readPem(values['tls-cert'], '--tls-cert'),
            key: readPem(values['tls-key']!, '--tls-key'),
            clientCa: values['client-ca'] ? readPem(values['client-ca'], '--client-ca') : undefined,
          }
        : undefined;
      const server = await startSiteServer({
        repoRoot,
        host,
        port,
        secrets,
        tls,
        log: (entry) => process.stderr.write((json ? JSON.stringify(entry) : `lifeboat site: ${entry.msg as string}: ${String(entry.error ?? '')}`) + '\n'),
      });
      process.stdout.write(
        json
          ? JSON.stringify({ event: 'listening', url: server.url, repoRoot, auth: server.auth }) + '\n'
          : `lifeboat site: listening on ${server.url} (repositories in ${repoRoot}; auth: ${server.auth.join(' + ')})\n`,
      );
      await new Promise<void>((done) => {
        process.once('SIGINT', done);
        process.once('SIGTERM', done);
      });
      await server.close();
      return 0;
    } catch (err) {
      if (err instanceof SiteConfigError) throw new UserError(err.message);
      throw err;
    }
  },
};

function parseListen(listen: string): { host: string; port: number } {
  const m = listen.match(/^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`--listen '${listen}' is not HOST:PORT (e.g. 0.0.0.0:7443, [::1]:7443, 127.0.0.1:0)`);
  return { host: m[1] ?? m[2], port };
}

function readPem(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new SiteConfigError(`cannot read ${option} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
