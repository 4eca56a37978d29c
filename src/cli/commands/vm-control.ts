// `lifeboat vm status|pause|resume|stop --api-sock PATH`: clients of a running VMM's control socket.
import { parseArgs } from 'node:util';
import { controlRequest, VmmError, type ControlRequest } from '../../../vmm/index.js';
import { UsageError, UserError, type Command } from '../command.js';

function controlCommand(op: ControlRequest['op'], summary: string, extraHelp = ''): Command {
  return {
    path: ['vm', op],
    summary,
    help: `Usage: lifeboat vm ${op} --api-sock PATH${op === 'stop' ? ' [--status N]' : ''}${op === 'status' ? ' [--json]' : ''}

${summary[0]!.toUpperCase()}${summary.slice(1)}, through the control socket given to 'lifeboat vm run --api-sock PATH'.
${extraHelp}See docs/vmm.md for the protocol.`,
    async run(argv) {
      let values;
      try {
        values = parseArgs({
          args: argv,
          strict: true,
          options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' }, status: { type: 'string' } },
        }).values;
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      const path = values['api-sock'];
      if (!path) throw new UsageError('--api-sock PATH is required');
      if (values.status !== undefined && op !== 'stop') throw new UsageError('--status only applies to vm stop');
      let request: ControlRequest = { op } as ControlRequest;
      if (op === 'stop' && values.status !== undefined) {
        if (!/^\d+$/.test(values.status) || Number(values.status) > 255) throw new UsageError('--status must be 0..255');
        request = { op: 'stop', status: Number(values.status) };
      }
      let response;
      try {
        response = await controlRequest(path, request);
      } catch (err) {
        if (err instanceof VmmError) throw new UserError(err.message);
        throw err;
      }
      if (!response.ok) throw new UserError(response.error);
      if (values.json || op !== 'status') {
        process.stdout.write(JSON.stringify(response) + '\n');
      } else {
        const r = response as Record<string, unknown>;
        const disks = (r.disks as Array<{ path: string; readOnly: boolean; sizeBytes: number }> | undefined) ?? [];
        process.stdout.write(`state ${r.state}\nvcpus ${r.vcpus}\nmemory ${r.memoryBytes} bytes\nuptime ${r.uptimeSeconds} s\n`);
        for (const d of disks) process.stdout.write(`disk ${d.path} ${d.sizeBytes} bytes${d.readOnly ? ' ro' : ''}\n`);
      }
      return 0;
    },
  };
}

export const vmStatus = controlCommand('status', 'show a running VM\'s state, vCPUs, memory, disks and uptime');
export const vmPause = controlCommand('pause', 'pause a running VM (all vCPUs stopped at one instant)');
export const vmResume = controlCommand('resume', 'resume a paused VM');
export const vmStop = controlCommand('stop', 'stop a VM as if the guest powered off (disks flushed)',
  'With --status N the VMM exits with status N (default 0).\n');
