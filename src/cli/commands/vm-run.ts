// `lifeboat vm run`: one VM in this process, console on the terminal, exit status = the guest's.
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as vmm from '../../../vmm/index.js';
import type { Machine, RunOptions, ValidatedConfig } from '../../../vmm/index.js';
import { UsageError, UserError, type Command } from '../command.js';
import { projectRoot } from '../../util/project-root.js';

// The vCPU worker threads were started before this module loaded (main.ts, prewarmForCommand), so that
// their start-up overlaps with loading the VMM code. `npm run build` bundles this command with the VMM
// (scripts/bundle.ts).
const { DEFAULT_MEMORY_MIB, DEFAULT_VCPUS } = vmm;

/** Ctrl-] on a terminal stops the VM (like telnet and virsh console). */
const ESCAPE_BYTE = 0x1d;
const DEFAULT_BOOT_TIMEOUT_S = 30;

export function defaultKernelPath(): string {
  return join(projectRoot(), 'guest', 'build', 'lifeboat-guest.bin');
}

const help = `Usage: lifeboat vm run [options]

Boots a microVM under Lifeboat's own KVM VMM. The console is this terminal; the command exits with the
guest's exit status (the Lifeboat guest's poweroff status, 0 for an ACPI poweroff).

Options:
  --kernel IMAGE        kernel (bzImage layout); default: the Lifeboat guest (guest/build/lifeboat-guest.bin)
  --initrd FILE         initial ramdisk
  --disk PATH[,ro]      raw disk image (size a multiple of 512), virtio-blk; repeat for more disks
  --vcpus N             vCPUs (default ${DEFAULT_VCPUS})
  --mem MiB             guest memory (default ${DEFAULT_MEMORY_MIB})
  --cmdline S           kernel command line (default: see docs/vmm.md)
  --exec 'CMDS'         run these commands in the Lifeboat guest's shell (';' separates), then power off
                        with the first failing command's status (0 if all succeed)
  --console-log FILE    also write the console output to FILE
  --api-sock PATH       control socket (JSON lines: status, pause, resume, stop); see 'lifeboat vm status'
  --boot-timeout S      fail if the guest prints no complete line and no shell prompt within S seconds
                        of each boot (default ${DEFAULT_BOOT_TIMEOUT_S}; 0 = no limit)
  --no-reboot           a guest reboot ends the VMM (status 0) instead of booting again
  --track-granularity SIZE
                        changed-block tracking granularity of writable disks: 4K..1M, a power of two
                        (default 64K); the bitmap is kept beside each image (IMAGE.lifeboat-cbt), see
                        docs/change-tracking.md
  --no-track-changes    do not track changed blocks
  --debug               stack traces for unexpected errors

On a terminal, Ctrl-] stops the VM. SIGTERM and SIGINT stop it too (status 143/130); disks are flushed.
Environment: LIFEBOAT_KVM_DEVICE names the KVM device (default /dev/kvm).
See docs/vmm.md.`;

function parseNumber(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value.trim())) throw new UsageError(`--${name} must be a whole number, got '${value}'`);
  return Number(value);
}

function buildConfig(values: Record<string, string | boolean | string[] | undefined>): { config: ValidatedConfig; bootTimeoutMs: number } {
  const kernelPath = (values.kernel as string | undefined) ?? defaultKernelPath();
  if (values.kernel === undefined && !existsSync(kernelPath)) {
    throw new UserError(`the Lifeboat guest is not built (${kernelPath} is missing): run 'make -C guest', or pass --kernel`);
  }
  let cmdline = (values.cmdline as string | undefined) ?? vmm.DEFAULT_CMDLINE;
  const exec = values.exec as string | undefined;
  if (exec !== undefined) {
    if (!exec.trim()) throw new UsageError('--exec needs at least one command');
    cmdline = `${cmdline} lifeboat.exec=${vmm.cmdlineValue(exec.replace(/\n/g, '; '))}`.trim();
  }
  const vcpus = parseNumber('vcpus', values.vcpus as string | undefined, DEFAULT_VCPUS);
  const memoryMib = parseNumber('mem', values.mem as string | undefined, DEFAULT_MEMORY_MIB);
  const bootTimeoutMs = parseNumber('boot-timeout', values['boot-timeout'] as string | undefined, DEFAULT_BOOT_TIMEOUT_S) * 1000;
  const disks = ((values.disk as string[] | undefined) ?? []).map(vmm.parseDiskSpec);
  const config = vmm.validateConfig({ kernelPath, initrdPath: values.initrd as string | undefined, cmdline, vcpus, memoryMib, disks });
  return { config, bootTimeoutMs };
}

/** Terminal input goes to the guest; Ctrl-] stops the VM. Returns the undo. */
function attachStdin(console: vmm.GuestConsole, stop: () => void): () => void {
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  if (tty) stdin.setRawMode(true);
  const onData = (chunk: Buffer) => {
    if (tty) {
      const escape = chunk.indexOf(ESCAPE_BYTE);
      if (escape >= 0) {
        if (escape > 0) console.input(chunk.subarray(0, escape));
        stop();
        return;
      }
    }
    console.input(chunk);
  };
  stdin.on('data', onData);
  stdin.on('error', () => {});
  return () => {
    stdin.off('data', onData);
    if (tty) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  };
}

export const vmRun: Command = {
  path: ['vm', 'run'],
  summary: 'boot a microVM (default: the Lifeboat guest) with its console on this terminal',
  help,
  async run(argv) {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        strict: true,
        allowPositionals: false,
        options: {
          kernel: { type: 'string' },
          initrd: { type: 'string' },
          disk: { type: 'string', multiple: true },
          vcpus: { type: 'string' },
          mem: { type: 'string' },
          cmdline: { type: 'string' },
          exec: { type: 'string' },
          'console-log': { type: 'string' },
          'api-sock': { type: 'string' },
          'boot-timeout': { type: 'string' },
          'no-reboot': { type: 'boolean' },
          'track-granularity': { type: 'string' },
          'no-track-changes': { type: 'boolean' },
        },
      });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const values = parsed.values;
    const trace = startupTrace();
    trace('command started');
    // Normally started already (main.ts); this covers a caller that runs the command directly.
    vmm.prewarmVcpuWorkers(parseNumber('vcpus', values.vcpus, DEFAULT_VCPUS));
    let built;
    try {
      built = buildConfig(values);
    } catch (err) {
      throw asUserError(err);
    }

    const trackChanges = values['no-track-changes'] ? false as const : { granularity: parseGranularity(values['track-granularity']) };
    return await runInForeground(values, { config: built.config, bootTimeoutMs: built.bootTimeoutMs, trackChanges, logDirtyPages: true });
  },
};

/**
 * LIFEBOAT_VMM_TRACE=1: a line on stderr per start-up milestone of the command, with the time since the
 * process started (the VMM's boot steps follow, vmm/machine.ts).
 */
export function startupTrace(): (what: string) => void {
  if (process.env.LIFEBOAT_VMM_TRACE !== '1') return () => {};
  return (what) => process.stderr.write(`lifeboat vm trace: ${what} (t=${performance.now().toFixed(1)} ms)\n`);
}

/** The options of a foreground VMM that come from the command line (shared with `lifeboat vm restore`). */
export interface ForegroundValues {
  'console-log'?: string;
  'api-sock'?: string;
  'no-reboot'?: boolean;
}

/**
 * Runs a VM in this process with its console on the terminal until it ends: console log, terminal
 * input (Ctrl-] stops), SIGTERM/SIGINT (clean stop, 143/130), control socket. Returns the exit status.
 */
export async function runInForeground(
  values: ForegroundValues,
  options: Omit<RunOptions, 'console' | 'apiSocket' | 'noReboot' | 'onBoot'>,
): Promise<number> {
  let logFd: number | undefined;
  if (values['console-log']) {
    try {
      logFd = openSync(values['console-log'], 'w');
    } catch (err) {
      throw new UserError(`cannot write console log ${values['console-log']}: ${(err as Error).message}`);
    }
  }
  // If whoever reads our stdout goes away (EPIPE), the VM keeps running; its console still goes to the log.
  let stdoutOpen = true;
  const onStdoutError = () => (stdoutOpen = false);
  process.stdout.on('error', onStdoutError);
  const sinks: Array<(chunk: Buffer) => void> = [(chunk) => {
    if (stdoutOpen) process.stdout.write(chunk);
  }];
  if (logFd !== undefined) sinks.push((chunk: Buffer) => writeSync(logFd!, chunk));
  const console = new vmm.GuestConsole(sinks);

  let machine: Machine | undefined;
  let signalled: number | undefined;
  const stop = (status: number) => {
    signalled ??= status;
    machine?.requestStop(status);
  };
  const onTerm = () => stop(143);
  const onInt = () => stop(130);
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  const detachStdin = attachStdin(console, () => stop(0));
  let result;
  try {
    result = await vmm.runVm({
      ...options,
      console,
      apiSocket: values['api-sock'],
      noReboot: values['no-reboot'] === true,
      onBoot: (m) => {
        machine = m;
        if (signalled !== undefined) m.requestStop(signalled);
      },
    });
  } catch (err) {
    throw asUserError(err);
  } finally {
    detachStdin();
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
    await console.close();
    process.stdout.off('error', onStdoutError);
    if (logFd !== undefined) closeSync(logFd);
  }
  if (result.error) throw new UserError(result.error);
  // Exit statuses are 8 bits: a larger guest status must not wrap around to success.
  return result.status > 255 ? 255 : result.status;
}

/**
 * `--track-granularity SIZE` (bytes, or with a K/M suffix) for change tracking (vmm/tracking); the
 * default when absent. Kept here for `lifeboat vm restore`; the tracking integration owns its meaning.
 */
export function parseGranularity(text: string | undefined): number {
  if (text === undefined) return 64 * 1024;
  const m = /^(\d+)([kKmM]?)(i?[bB])?$/.exec(text.trim());
  if (!m) throw new UsageError(`--track-granularity must be a size like 64K, got '${text}'`);
  const bytes = Number(m[1]) * (m[2] ? (m[2].toLowerCase() === 'k' ? 1024 : 1024 * 1024) : 1);
  if (bytes < 4096 || bytes > 1024 * 1024 || (bytes & (bytes - 1)) !== 0) {
    throw new UsageError(`--track-granularity must be a power of two from 4K to 1M, got '${text}'`);
  }
  return bytes;
}

export function asUserError(err: unknown): unknown {
  if (err instanceof vmm.VmmError) return new UserError(err.message, err.exitCode);
  if (err instanceof vmm.BootError) return new UserError(err.message);
  return err;
}
