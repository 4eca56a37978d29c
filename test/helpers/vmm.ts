// Running `lifeboat vm run` as a user does, from tests: a child process whose console we capture, wait
// on, type into, kill, with clear failures on timeouts. Also tiny hand-assembled kernels (valid
// bzImage layout) for the VMM's own error paths.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../../src/util/project-root.js';

/** The compiled CLI entry of the same build as this helper (what bin/lifeboat runs for dist/). */
export const LIFEBOAT_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Fails loudly (never skips) when the host has no KVM. */
export function requireKvm(): void {
  if (!existsSync('/dev/kvm')) throw new Error('these tests need /dev/kvm (real KVM); this host has none');
}

export function guestImage(): string {
  const path = join(projectRoot(), 'guest', 'build', 'lifeboat-guest.bin');
  if (!existsSync(path)) throw new Error(`the Lifeboat guest is not built (${path}); run 'make -C guest'`);
  return path;
}

export function tempDir(prefix = 'lifeboat-vmm-'): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export class VmProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<VmExit>;
  private waiters: Array<() => void> = [];

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [LIFEBOAT_MAIN, 'vm', 'run', ...args], {
      cwd: projectRoot(),
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('latin1').on('data', (s: string) => {
      this.stdout += s;
      this.notify();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.stderr += s;
      this.notify();
    });
    this.child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => this.child.once('close', (code, signal) => {
      this.notify();
      resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
    }));
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * Waits until the console output after `from` (a stdout offset) matches; returns the match and
   * the offset just past it. Fails with the console tail on timeout or if the VMM exits first.
   */
  async waitFor(pattern: string | RegExp, timeoutMs = 30_000, from = 0): Promise<{ match: RegExpExecArray; end: number }> {
    const re = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.stdout.slice(from));
      if (m) return { match: m, end: from + m.index + m[0].length };
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`the VMM exited (${this.child.exitCode ?? this.child.signalCode}) before printing ${re}; console tail:\n${this.stdout.slice(-1500)}\nstderr: ${this.stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${re}; console tail:\n${this.stdout.slice(-1500)}\nstderr: ${this.stderr}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits for the shell prompt after `from`; returns the offset past it. */
  async prompt(timeoutMs = 30_000, from = 0): Promise<number> {
    return (await this.waitFor('lifeboat> ', timeoutMs, from)).end;
  }

  /** Types a command at the prompt and returns its output (up to the next prompt). */
  async command(line: string, timeoutMs = 60_000): Promise<string> {
    const from = this.stdout.length;
    this.send(line + '\n');
    const { match, end } = await this.waitFor(/lifeboat> $/m, timeoutMs, from);
    return this.stdout.slice(from, end - match[0].length);
  }

  send(text: string | Uint8Array): void {
    this.child.stdin!.write(text);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  /** Resolves with the exit, or kills the VMM and fails after `timeoutMs`. */
  async wait(timeoutMs = 60_000): Promise<VmExit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.kill();
        reject(new Error(`the VMM did not exit within ${timeoutMs} ms; console tail:\n${this.stdout.slice(-1500)}\nstderr: ${this.stderr}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Runs `lifeboat vm run ARGS` to completion. */
export async function runVm(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<VmExit> {
  const vm = new VmProcess(args, options.env);
  vm.child.stdin!.end();
  return await vm.wait(options.timeoutMs ?? 60_000);
}

/** Runs another lifeboat command (e.g. `vm status`) to completion. */
export async function runLifeboat(args: string[], timeoutMs = 30_000): Promise<VmExit> {
  const child = spawn(process.execPath, [LIFEBOAT_MAIN, ...args], { cwd: projectRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`lifeboat ${args.join(' ')} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// ---- tiny kernels: a bzImage header and a few bytes of 64-bit code at the entry (payload + 0x200) ----

const SETUP_SECTS = 1;

/** A minimal image in the Linux bzImage layout whose 64-bit entry runs `code`. */
export function tinyKernel(code: readonly number[], kernelVersion?: string): Buffer {
  const payloadStart = (SETUP_SECTS + 1) * 512;
  const entry = 0x200;
  const img = Buffer.alloc(payloadStart + entry + code.length + 16);
  img[0x1f1] = SETUP_SECTS;
  img.writeUInt16LE(0xaa55, 0x1fe); // boot_flag
  img.writeUInt32LE(0x53726448, 0x202); // "HdrS"
  img.writeUInt16LE(0x020f, 0x206); // boot protocol 2.15
  img.writeUInt32LE(0x7fffffff, 0x22c); // initrd_addr_max
  img.writeUInt16LE(1, 0x236); // xloadflags: 64-bit entry
  img.writeUInt32LE(2047, 0x238); // cmdline_size
  img.writeUInt32LE(0x100000, 0x260); // init_size
  if (kernelVersion) {
    const at = 0x300; // inside the setup sectors; the header stores it minus 0x200
    img.write(kernelVersion + '\0', at, 'latin1');
    img.writeUInt16LE(at - 0x200, 0x20e);
  }
  Buffer.from(code).copy(img, payloadStart + entry);
  return img;
}

/** x86-64 machine code for tiny kernels (assembled by hand; comments give the assembly). */
export const X86 = {
  /** mov dx, 0x3f8; then for each byte: mov al, b; out dx, al */
  print(text: string): number[] {
    const out = [0x66, 0xba, 0xf8, 0x03];
    for (const b of Buffer.from(text, 'latin1')) out.push(0xb0, b, 0xee);
    return out;
  },
  /** mov eax, status; out 0xf4, eax; hlt; jmp $-1 */
  exit(status: number): number[] {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(status >>> 0);
    return [0xb8, ...b, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd];
  },
  /** mov al, 0xfe; out 0x64, al: the i8042 reset (reboot) */
  reset: [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe],
  /** mov al, SLP_TYP(5)<<2 | SLP_EN; mov dx, 0x600; out dx, al: ACPI poweroff */
  acpiPoweroff: [0xb0, 0x34, 0x66, 0xba, 0x00, 0x06, 0xee, 0xeb, 0xfe],
  /** jmp $ (spins silently) */
  hang: [0xeb, 0xfe],
  /** lock cmpxchg16b [rsp]: PVM cannot emulate it (a KVM internal error on this host) */
  cmpxchg16b: [0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x24],
  /** ud2 with no IDT: #UD, #DF, triple fault */
  ud2: [0x0f, 0x0b],
} as const;
