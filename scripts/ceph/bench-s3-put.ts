// Put throughput of the S3 target, for choosing the repository's pack size and upload concurrency.
//
//   scripts/ceph-rgw.sh start && eval "$(scripts/ceph-rgw.sh env)"
//   node dist/scripts/ceph/bench-s3-put.js [--sizes-mib 4,16] [--concurrency 4,8] [--total-mib 512]
//
// Endpoint and credentials come from LIFEBOAT_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_REGION. Each run writes --total-mib of random data into a fresh bucket, then deletes the objects (the empty bucket stays).

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { createS3Target } from '../../replication/targets/s3.js';

const MiB = 1024 * 1024;

function numbers(text: string): number[] {
  return text.split(',').map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`'${s}' is not a positive whole number`);
    return n;
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'sizes-mib': { type: 'string', default: '4,16' },
      concurrency: { type: 'string', default: '4,8' },
      'total-mib': { type: 'string', default: '512' },
    },
  });
  const endpoint = process.env.LIFEBOAT_S3_ENDPOINT;
  if (!endpoint) throw new Error('set LIFEBOAT_S3_ENDPOINT (eval "$(scripts/ceph-rgw.sh env)")');
  const totalBytes = numbers(values['total-mib'])[0] * MiB;
  const bucket = `lifeboat-bench-${Date.now().toString(36)}`;
  const target = createS3Target({ bucket, endpoint, region: process.env.AWS_REGION });
  await target.ensureBucket();
  // One pool of random bytes, sliced: the client's time goes to uploading, not to generating data.
  const pool = randomBytes(64 * MiB);
  console.log('object_mib concurrency objects seconds mib_per_s puts_per_s');
  try {
    for (const sizeMiB of numbers(values['sizes-mib'])) {
      const size = sizeMiB * MiB;
      for (const concurrency of numbers(values.concurrency)) {
        const count = Math.max(concurrency, Math.round(totalBytes / size));
        let next = 0;
        const started = process.hrtime.bigint();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < count) {
              const i = next++;
              const offset = (i * 4099) % (pool.length - size + 1);
              await target.put(`bench/${sizeMiB}-${concurrency}/${i}`, pool.subarray(offset, offset + size));
            }
          }),
        );
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        console.log(`${sizeMiB} ${concurrency} ${count} ${seconds.toFixed(2)} ${((count * size) / MiB / seconds).toFixed(0)} ${(count / seconds).toFixed(1)}`);
        for (let i = 0; i < count; i++) await target.delete(`bench/${sizeMiB}-${concurrency}/${i}`);
      }
    }
  } finally {
    await target.close();
  }
}

main().catch((err: unknown) => {
  console.error(`bench-s3-put: ${(err as Error).message}`);
  process.exit(1);
});
