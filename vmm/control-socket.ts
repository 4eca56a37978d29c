// The VMM's control socket: newline-delimited JSON over a Unix socket, one request per line, one
// response line each, in order. Requests: {"op":"status"|"pause"|"resume"|"stop", "status"?: N}.
// Responses: {"ok":true, ...} or {"ok":false,"error":"..."}. Documented in docs/vmm.md.
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { VmmError } from './kvm/errors.js';

export type ControlRequest =
  | { op: 'status' }
  | { op: 'pause' }
  | { op: 'resume' }
  | { op: 'stop'; status?: number };

export type ControlResponse = ({ ok: true } & Record<string, unknown>) | { ok: false; error: string };

export interface ControlHandlers {
  status(): Record<string, unknown>;
  pause(): Promise<void>;
  resume(): void;
  stop(status: number): void;
  /**
   * Every other op (change tracking, points, snapshots register theirs here): the response fields, or
   * undefined for "not an op I know". Throwing answers {"ok":false,"error":message}.
   */
  other?(request: { op: string } & Record<string, unknown>): Promise<Record<string, unknown> | undefined>;
}

const MAX_LINE = 64 * 1024;

export class ControlSocket {
  private readonly clients = new Set<Socket>();

  private constructor(readonly path: string, private readonly server: Server, private readonly current: { handlers: ControlHandlers }) {
    server.on('connection', (socket) => {
      this.clients.add(socket);
      socket.once('close', () => this.clients.delete(socket));
    });
  }

  /** Listens on `path`, replacing a stale socket file; refuses if another VMM still listens there. */
  static async listen(path: string, handlers: ControlHandlers): Promise<ControlSocket> {
    await removeStaleSocket(path);
    const current = { handlers };
    const server = createServer((socket) => serve(socket, current));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new VmmError(`cannot listen on control socket ${path}: ${err.message}`)));
      server.listen(path, () => resolve());
    });
    return new ControlSocket(path, server, current);
  }

  /** Hands every later request, on every connection, to `handlers` (a standby VMM once its VM exists). */
  setHandlers(handlers: ControlHandlers): void {
    this.current.handlers = handlers;
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new VmmError(`control socket path ${path} exists and is not a socket; choose another --api-sock path`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new VmmError(`another VMM is listening on ${path}; stop it or choose another --api-sock path`);
  unlinkSync(path);
}

function serve(socket: Socket, current: { handlers: ControlHandlers }): void {
  let buffered = '';
  let chain = Promise.resolve();
  socket.setEncoding('utf8');
  socket.on('data', (text: string) => {
    buffered += text;
    if (buffered.length > MAX_LINE && !buffered.includes('\n')) {
      socket.end(JSON.stringify({ ok: false, error: 'request line too long' }) + '\n');
      return;
    }
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      chain = chain.then(async () => {
        const response = await handle(line, current.handlers);
        if (!socket.destroyed) socket.write(JSON.stringify(response) + '\n');
      });
    }
  });
  socket.on('error', () => socket.destroy());
}

async function handle(line: string, handlers: ControlHandlers): Promise<ControlResponse> {
  let request: unknown;
  try {
    request = JSON.parse(line);
  } catch {
    return { ok: false, error: 'not JSON: send one JSON object per line, e.g. {"op":"status"}' };
  }
  const op = typeof request === 'object' && request !== null ? (request as { op?: unknown }).op : undefined;
  try {
    switch (op) {
      case 'status':
        return { ok: true, ...handlers.status() };
      case 'pause':
        await handlers.pause();
        return { ok: true, state: 'paused' };
      case 'resume':
        handlers.resume();
        return { ok: true, state: 'running' };
      case 'stop': {
        const status = (request as { status?: unknown }).status ?? 0;
        if (typeof status !== 'number' || !Number.isInteger(status) || status < 0 || status > 255) {
          return { ok: false, error: 'stop: status must be an integer 0..255' };
        }
        handlers.stop(status);
        return { ok: true, state: 'stopping', status };
      }
      default: {
        if (typeof op === 'string' && handlers.other) {
          const result = await handlers.other(request as { op: string } & Record<string, unknown>);
          if (result) return { ok: true, ...result };
        }
        return { ok: false, error: `unknown op ${JSON.stringify(op)}: use status, pause, resume or stop` };
      }
    }
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

/** Client side: sends one request and returns the response (used by `lifeboat vm status|pause|...`). */
export async function controlRequest(path: string, request: ControlRequest | ({ op: string } & Record<string, unknown>), timeoutMs = 10_000): Promise<ControlResponse> {
  return await new Promise<ControlResponse>((resolve, reject) => {
    const socket = createConnection(path);
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new VmmError(`no answer from the VMM on ${path} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(JSON.stringify(request) + '\n'));
    socket.on('data', (chunk: string) => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        socket.end();
        try {
          resolve(JSON.parse(text.slice(0, nl)) as ControlResponse);
        } catch {
          reject(new VmmError(`the VMM on ${path} sent a response that is not JSON`));
        }
      }
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why = err.code === 'ENOENT' ? 'no such socket' : err.code === 'ECONNREFUSED' ? 'nothing is listening (the VMM has exited?)' : err.message;
      reject(new VmmError(`cannot reach the VMM on ${path}: ${why}`));
    });
  });
}
