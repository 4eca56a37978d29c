// `lifeboat snapshot create`: a full or diff VM snapshot of a running VM (memory, vCPU, VM and device
// state), taken with a pause of a few milliseconds.
import { resolve } from 'node:path';
import { UsageError, type Command } from '../command.js';
import { parseOptions, printJson, requireSocket, vmmOp } from './point-common.js';

export const snapshotCreate: Command = {
  path: ['snapshot', 'create'],
  summary: 'snapshot a running VM (--full or --diff) into a new directory; the guest keeps running',
  help: `Usage: lifeboat snapshot create (--full | --diff) --out DIR --api-sock PATH [--with-disks] [--json]

--full         every non-zero page of guest memory, plus vCPU, VM and device state
--diff         only the pages changed since this VM's previous snapshot (full or diff) and state;
               restore with: lifeboat vm restore --from FULL --from DIFF1 --from DIFF2 ...
--out DIR      a new directory (it must not exist); written under a temporary name and renamed last,
               so DIR exists only once the snapshot is complete and on stable storage
--with-disks   also take a disk point at the same paused instant and store each tracked disk as of
               it in DIR/disk-N.img: together a resumable recovery point
Memory is copied while the guest runs, then the VM pauses briefly to copy the pages dirtied meanwhile
and save the state. If writing fails (e.g. a full filesystem) the dirty pages are kept for the next
snapshot and the error says why. Prints: snapshot ID KIND DIR pause_ms=.. total_ms=.. pages=.. bytes=..
See docs/snapshot-format.md.`,
  async run(argv) {
    const v = parseOptions(argv, {
      'api-sock': { type: 'string' }, full: { type: 'boolean' }, diff: { type: 'boolean' }, out: { type: 'string' },
      'with-disks': { type: 'boolean' }, json: { type: 'boolean' },
    });
    if (v.full === v.diff) throw new UsageError('give exactly one of --full or --diff');
    if (!v.out) throw new UsageError('--out DIR is required (a directory that does not exist yet)');
    const r = await vmmOp(requireSocket(v), { op: 'snapshot.create', kind: v.full ? 'full' : 'diff', out: resolve(v.out), withDisks: v['with-disks'] === true });
    const { ok: _ok, ...result } = r;
    if (v.json) printJson(result);
    else {
      process.stdout.write(`snapshot ${r.snapshotId} ${r.kind} ${r.dir} pause_ms=${r.pauseMs} total_ms=${r.totalMs} pages=${r.memoryPages} bytes=${r.diskBytes}${r.parentId ? ` parent=${r.parentId}` : ''}\n`);
    }
    return 0;
  },
};
