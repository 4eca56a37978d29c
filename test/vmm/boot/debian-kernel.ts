// The stock Linux guest from scripts/linux-guest.sh (Debian's cloud kernel + busybox initramfs).
// The first run downloads the packages from Debian's mirror; later runs return the cached build at once.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../../src/util/project-root.js';

export interface LinuxGuest {
  kernel: string;
  initrd: string;
  kernelVersion: string;
}

let cached: LinuxGuest | undefined;

export function debianLinuxGuest(): LinuxGuest {
  if (cached) return cached;
  const out = execFileSync(join(projectRoot(), 'scripts/linux-guest.sh'), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 600_000,
  });
  const value = (key: string) => {
    const m = new RegExp(`^${key}=(.+)$`, 'm').exec(out);
    if (!m) throw new Error(`scripts/linux-guest.sh printed no ${key}= line:\n${out}`);
    return m[1]!;
  };
  cached = { kernel: value('KERNEL'), initrd: value('INITRD'), kernelVersion: value('KERNEL_VERSION') };
  return cached;
}
