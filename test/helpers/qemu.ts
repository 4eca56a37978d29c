// Runs the Lifeboat guest under QEMU `-M microvm` (the reference platform the guest is validated
// against before it meets our own VMM): builds the guest if needed, starts QEMU with a hard
// timeout, collects the serial console, sends input, and decodes the guest's exit status.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/util/project-root.js';

export type Accel = 'kvm' | 'tcg';

export interface QemuDisk {
  /** Raw image file. */
  path: string;
  readOnly?: boolean;
}

export interface QemuOptions {
  accel?: Accel;
  cpus?: number;
  memoryMiB?: number;
  /** virtio-blk disks, in guest disk order (disk 0 first). */
  disks?: QemuDisk[];
  /** Commands for `lifeboat.exec` ("cmd1; cmd2"); without it the guest starts its interactive shell. */
  exec?: string;
  /** More kernel command-line parameters (e.g. `lifeboat.tsc_khz=2600000`). */
  append?: string;
  /** The whole run is killed (and every wait fails) after this long. */
  timeoutMs?: number;
  /** Defaults to guest/build/lifeboat-guest.elf (PVH entry). */
  kernel?: string;
}

export interface QemuExit {
  /** QEMU's exit code (null when killed by a signal). */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The STATUS the guest wrote to the exit port (QEMU exits with STATUS*2+1), or null. */
  guestStatus: number | null;
  /** The status from the guest's `lifeboat: poweroff status=N` line, or null. */
  printedStatus: number | null;
  timedOut: boolean;
  output: string;
}

export const PROMPT = 'lifeboat> ';
const DEFAULT_TIMEOUT_MS = 60_000;
const live = new Set<QemuGuest>();

export function guestElfPath(): string {
  return join(projectRoot(), 'guest', 'build', 'lifeboat-guest.elf');
}

export function guestBinPath(): string {
  return join(projectRoot(), 'guest', 'build', 'lifeboat-guest.bin');
}

let built = false;
/** Runs `make -C guest` once per process (fast when nothing changed). */
export function ensureGuestBuilt(): void {
  if (built) return;
  execFileSync('make', ['-s', '-C', join(projectRoot(), 'guest')], { stdio: 'inherit' });
  if (!existsSync(guestElfPath()) || !existsSync(guestBinPath())) throw new Error('make -C guest did not produce guest/build/lifeboat-guest.{elf,bin}');
  built = true;
}

/** Throws a clear error when KVM cannot be used: KVM tests must fail loudly, never skip. */
export function requireKvm(): void {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    throw new Error('/dev/kvm is missing or not accessible: the KVM variant of this test needs it (run as a user in the kvm group on a KVM host)');
  }
}

/** Decodes QEMU's isa-debug-exit code (STATUS*2+1) back to the guest's STATUS. */
export function guestStatusFromQemuCode(code: number | null): number | null {
  return code !== null && code % 2 === 1 ? (code - 1) / 2 : null;
}

export function qemuArgs(opts: QemuOptions): string[] {
  const accel = opts.accel ?? 'kvm';
  const append = [opts.exec !== undefined ? `lifeboat.exec="${opts.exec}"` : '', opts.append ?? ''].filter(Boolean).join(' ');
  const args = [
    '-M', 'microvm',
    '-accel', accel,
    '-cpu', accel === 'kvm' ? 'host,-arch-capabilities' : 'max',
    '-smp', String(opts.cpus ?? 2),
    '-m', String(opts.memoryMiB ?? 128),
    '-nodefaults', '-no-reboot', '-display', 'none',
    '-chardev', 'stdio,id=console,signal=off',
    '-serial', 'chardev:console',
    '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
    // QEMU 7.2's virtio-mmio defaults to the legacy (version 1) interface; the guest speaks version 2.
    '-global', 'virtio-mmio.force-legacy=false',
    '-kernel', opts.kernel ?? guestElfPath(),
  ];
  if (append) args.push('-append', append);
  (opts.disks ?? []).forEach((disk, i) => {
    args.push('-drive', `id=disk${i},file=${disk.path},format=raw,if=none${disk.readOnly ? ',readonly=on' : ''}`);
    args.push('-device', `virtio-blk-device,drive=disk${i}`);
  });
  return args;
}

export class QemuGuest {
  output = '';
  readonly process: ChildProcess;
  readonly exited: Promise<QemuExit>;
  private timedOut = false;
  private readonly timer: NodeJS.Timeout;
  private readonly listeners = new Set<() => void>();
  private exit: QemuExit | undefined;

  constructor(readonly options: QemuOptions) {
    ensureGuestBuilt();
    if ((options.accel ?? 'kvm') === 'kvm') requireKvm();
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.process = spawn('qemu-system-x86_64', qemuArgs(options), { stdio: ['pipe', 'pipe', 'pipe'] });
    live.add(this);
    this.process.stdout!.setEncoding('latin1');
    this.process.stderr!.setEncoding('latin1');
    const onData = (chunk: string) => {
      this.output += chunk.replace(/\r/g, '');
      for (const l of [...this.listeners]) l();
    };
    this.process.stdout!.on('data', onData);
    this.process.stderr!.on('data', onData);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.process.kill('SIGKILL');
    }, timeoutMs);
    this.exited = new Promise((resolve) => {
      this.process.on('close', (code, signal) => {
        clearTimeout(this.timer);
        live.delete(this);
        const printed = /lifeboat: poweroff status=(\d+)/.exec(this.output);
        this.exit = {
          code,
          signal,
          guestStatus: guestStatusFromQemuCode(code),
          printedStatus: printed ? Number(printed[1]) : null,
          timedOut: this.timedOut,
          output: this.output,
        };
        for (const l of [...this.listeners]) l();
        resolve(this.exit);
      });
    });
  }

  /**
   * Resolves with the first match of pattern in the console output after `from` (a character index).
   * Output arrives in pieces: end a pattern with `\n`, not `$` with /m, which also matches the end of a
   * line still arriving.
   */
  waitFor(pattern: RegExp | string, timeoutMs = 30_000, from = 0): Promise<RegExpExecArray> {
    const re = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
    return this.waitUntil(
      (output) => {
        const m = re.exec(output.slice(from));
        if (m) m.index += from;
        return m;
      },
      timeoutMs,
      String(re),
    );
  }

  /** Resolves with the first truthy value probe returns for the console output so far. */
  waitUntil<T>(probe: (output: string) => T | null | undefined | false, timeoutMs = 30_000, what = 'the awaited output'): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = probe(this.output);
        if (value) {
          done();
          resolve(value);
        } else if (this.exit) {
          done();
          reject(new Error(`QEMU exited (code ${this.exit.code}, signal ${this.exit.signal}${this.exit.timedOut ? ', killed by the run timeout' : ''}) before the console showed ${what}; console:\n${this.tail()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`guest hung: no ${what} on the console within ${timeoutMs} ms; console:\n${this.tail()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Writes to the guest's serial input. */
  send(text: string): void {
    this.process.stdin!.write(text);
  }

  /** Types a command at the prompt and waits for the next prompt; returns the output in between. */
  async command(line: string, timeoutMs = 30_000): Promise<string> {
    const from = this.output.length;
    this.send(`${line}\r`);
    const m = await this.waitFor(new RegExp(`\\n${PROMPT}`), timeoutMs, from);
    return this.output.slice(from, m.index);
  }

  /** Waits for QEMU to exit (it is killed when the run timeout passes). */
  async wait(): Promise<QemuExit> {
    return this.exited;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<QemuExit> {
    if (!this.exit) this.process.kill(signal);
    return this.exited;
  }

  tail(chars = 4000): string {
    return this.output.length > chars ? `...${this.output.slice(-chars)}` : this.output;
  }
}

export function startQemu(options: QemuOptions): QemuGuest {
  return new QemuGuest(options);
}

/** Boots the guest and waits for it to power off (or for the timeout to kill it). */
export async function runQemu(options: QemuOptions): Promise<QemuExit> {
  return startQemu(options).wait();
}

/** Kills every QEMU this process started and has not seen exit (for afterEach hooks). */
export async function killAllGuests(): Promise<void> {
  await Promise.all([...live].map((g) => g.kill()));
}

process.on('exit', () => {
  for (const g of live) g.process.kill('SIGKILL');
});
