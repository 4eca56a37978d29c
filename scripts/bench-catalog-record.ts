// Micro-benchmark (not a test; mocha does not run it): recording recovery points of a 65,536-cell disk
// in the catalog, a full point and then incrementals that each change 1% of the cells.
// Run: node dist/scripts/bench-catalog-record.js [points]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCatalog, type ChunkReference, type PointRecord } from '../catalog/index.js';

const CELLS = 65536;
const CHANGED = Math.round(CELLS / 100);
const rounds = Number(process.argv[2] ?? 5);

const hex = (n: number) => n.toString(16).padStart(64, '0');
const ref = (n: number): ChunkReference => ({ id: hex(n), size: 65536, storedSize: 40000, pack: hex(1e9 + Math.floor(n / 256)) });

const dir = mkdtempSync(join(tmpdir(), 'lifeboat-bench-catalog-'));
try {
  const catalog = openCatalog(join(dir, 'catalog.sqlite'));
  const target = { id: 'repo', kind: 'local' as const, location: dir, siteId: null };
  catalog.upsertTarget(target);
  const cells = Array.from({ length: CELLS }, (_, c) => c);
  let next = CELLS;
  let parent: string | null = null;
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0), seed / 2 ** 32);
  for (let r = 0; r <= rounds; r++) {
    const changed: string[] = [];
    if (r > 0) {
      for (let i = 0; i < CHANGED; i++) {
        const c = Math.floor(random() * CELLS);
        changed.push(hex(cells[c]));
        cells[c] = next++;
        changed.push(hex(cells[c]));
      }
    }
    const id = `point-${r}`;
    const record: PointRecord = {
      id,
      vmId: 'vm',
      targetId: target.id,
      parentId: parent,
      consistency: 'crash',
      createdAt: new Date(Date.UTC(2026, 0, 1, 0, r)).toISOString(),
      logicalBytes: CELLS * 65536,
      storedBytes: 0,
      state: 'complete',
      hasMemory: false,
      disks: [{ name: 'root', sizeBytes: CELLS * 65536 }],
      chunks: cells.map(ref),
      // Ignored by a catalog that records every chunk of every point.
      ...(parent ? { delta: { baseId: parent, changed } } : {}),
    };
    const started = process.hrtime.bigint();
    catalog.recordPoint(record);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    process.stdout.write(`${r === 0 ? 'full point      ' : 'incremental (1%)'}  ${CELLS} chunks, ${r === 0 ? CELLS : CHANGED} cells changed: ${ms.toFixed(1)} ms\n`);
    parent = id;
  }
  const started = process.hrtime.bigint();
  const chunks = catalog.listChunks(target.id);
  const unreferenced = catalog.unreferencedChunks(target.id).length;
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  process.stdout.write(`listChunks + unreferencedChunks (${chunks.length} chunks, ${unreferenced} unreferenced): ${ms.toFixed(1)} ms\n`);
  catalog.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
