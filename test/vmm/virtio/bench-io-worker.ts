// Benchmark (not a test): requests per second the virtio I/O worker sustains, driven by the guest-less
// test driver over a real sparse image (page cache warm), real eventfds and real guest memory.
//   node dist-NAME/test/vmm/virtio/bench-io-worker.js [--seconds 3] [--json]
// The driver runs on this thread and waits on the irqfd with poll(), like a vCPU that sleeps until the
// interrupt; its own bookkeeping is included in the figures, so they are a floor for the worker.
import { parseArgs } from 'node:util';
import { BlkReqType, BlkStatus, UsedFlag } from '../../../vmm/devices/virtio/abi.js';
import { seededBytes, writeImage } from './data.js';
import { BlockRig, TestBlockDriver, type Request } from './driver.js';

const MiB = 1 << 20;
const { values } = parseArgs({ options: { seconds: { type: 'string', default: '3' }, json: { type: 'boolean', default: false } } });
const seconds = Number(values.seconds);

interface Result {
  name: string;
  queueDepth: number;
  requests: number;
  requestsPerSecond: number;
  mibPerSecond: number;
}

function kickIfWanted(d: TestBlockDriver): void {
  d.publish();
  if ((d.usedFlags() & UsedFlag.NO_NOTIFY) === 0) d.kick();
}

/** Keeps `depth` requests in flight for `seconds`; `make(i)` builds request number i. */
function measure(d: TestBlockDriver, name: string, depth: number, bytesPerRequest: number, make: (i: number, slot: number) => Request): Result {
  let issued = 0;
  let done = 0;
  const slotOf = new Map<number, number>();
  for (let s = 0; s < depth; s++) slotOf.set(d.add(make(issued++, s)), s);
  kickIfWanted(d);
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < end) {
    const completions = d.waitFor(1);
    for (const c of completions) {
      if (c.status !== BlkStatus.OK) throw new Error(`${name}: request failed with status ${c.status}`);
      const slot = slotOf.get(c.head)!;
      slotOf.delete(c.head);
      slotOf.set(d.add(make(issued++, slot)), slot);
      done++;
    }
    kickIfWanted(d);
    now = process.hrtime.bigint();
  }
  const elapsed = Number(now - start) / 1e9;
  d.waitFor(slotOf.size);
  return { name, queueDepth: depth, requests: done, requestsPerSecond: Math.round(done / elapsed), mibPerSecond: Math.round((done * bytesPerRequest) / MiB / elapsed) };
}

const rig = await BlockRig.create([{ size: 1024 * MiB }], 512 * MiB);
try {
  const d = rig.driver;
  d.init();
  const readRegion = 256 * MiB;
  for (let off = 0; off < readRegion; off += 16 * MiB) writeImage(rig.imagePath(), off, seededBytes(off / MiB, 16 * MiB));
  const pages = readRegion / 4096;
  let x = 12345;
  const random = () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 8) % pages;
  const small = Array.from({ length: 64 }, () => d.buffer(4096));
  const large = Array.from({ length: 16 }, () => d.buffer(MiB));
  large.forEach((b, i) => rig.memory.write(b.gpa, seededBytes(i, MiB)));
  const writeRegion = 512 * MiB;

  const results: Result[] = [];
  for (const depth of [1, 32]) {
    results.push(measure(d, '4k-random-read', depth, 4096, (_, slot) => ({ type: BlkReqType.IN, sector: random() * 8, data: [small[slot]!] })));
  }
  const chunks = Array.from({ length: 8 }, () => d.buffer(128 * 1024));
  results.push(
    measure(d, '128k-sequential-read', 8, 128 * 1024, (i, slot) => ({ type: BlkReqType.IN, sector: ((i * 128 * 1024) % readRegion) / 512, data: [chunks[slot]!] })),
  );
  for (const depth of [1, 8]) {
    results.push(
      measure(d, '1m-sequential-write', depth, MiB, (i, slot) => ({ type: BlkReqType.OUT, sector: (readRegion + ((i * MiB) % writeRegion)) / 512, data: [large[slot]!] })),
    );
  }
  if (values.json) console.log(JSON.stringify(results));
  else for (const r of results) console.log(`${r.name.padEnd(20)} qd=${String(r.queueDepth).padEnd(3)} ${String(r.requestsPerSecond).padStart(7)} req/s ${String(r.mibPerSecond).padStart(6)} MiB/s (${r.requests} requests)`);
} finally {
  await rig.close();
}
