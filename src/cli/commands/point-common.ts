// What the point and snapshot commands share: argument parsing and one request to a running VMM's
// control socket (the ops are listed in vmm/snapshot/control-ops.ts).
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { controlRequest, VmmError, type ControlRequest } from '../../../vmm/index.js';
import { UsageError, UserError } from '../command.js';

export function parseOptions<O extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: false, options }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function requireSocket(values: { 'api-sock'?: string | boolean | (string | boolean)[] }): string {
  const path = values['api-sock'];
  if (typeof path !== 'string' || !path) throw new UsageError('--api-sock PATH is required (the socket given to lifeboat vm run --api-sock)');
  return path;
}

export function wholeNumber(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${name} must be a whole number, got '${value}'`);
  return Number(value);
}

/** Sends one op and returns the answer's fields; a refusal becomes a one-line UserError. */
export async function vmmOp(socket: string, request: { op: string } & Record<string, unknown>, timeoutMs = 600_000): Promise<Record<string, unknown>> {
  let response;
  try {
    response = await controlRequest(socket, request as unknown as ControlRequest, timeoutMs);
  } catch (err) {
    if (err instanceof VmmError) throw new UserError(err.message);
    throw err;
  }
  if (!response.ok) throw new UserError(response.error);
  return response as Record<string, unknown>;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

export interface PointLine {
  disk: number;
  generation: number;
  path: string;
  state: string;
  trusted: boolean;
  changedBytes: number;
  preservedBytes: number;
  createdAt: string;
}

export function pointLine(p: PointLine): string {
  return `point ${p.generation} disk ${p.disk} ${p.state} changed=${p.changedBytes} preserved=${p.preservedBytes} trusted=${p.trusted ? 'yes' : 'no'} created=${p.createdAt} ${p.path}`;
}
