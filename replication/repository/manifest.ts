// Recovery-point manifests (`points/ID`): everything a point is, written last and never rewritten. The id
// is derived from the manifest's own bytes, so the name is known only once the point is complete.

import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { FORMAT_VERSION, HEX_ID_PATTERN, MAP_PAGE_CELLS, POINT_ID_BYTES } from './constants.js';
import { AuthenticationError, type Sealer } from './crypto.js';
import { AAD_POINT, FormatError } from './layout.js';

export const POINT_FORMAT = 'lifeboat-point';

/**
 * How consistent the images are:
 * - `crash`: copied while the VM may have been writing; as consistent as after a power cut at some instant.
 * - `paused`: taken at an instant when the VM was paused: crash-consistent, and resumable with memory.
 * - `application`: the guest flushed and agreed to the instant.
 * - `offline`: the VM was not running.
 */
export type Consistency = 'crash' | 'paused' | 'application' | 'offline';
export const CONSISTENCY_KINDS: readonly Consistency[] = ['crash', 'paused', 'application', 'offline'];

/** A disk or memory image: its size and the ids of the pages of its extent map. */
export interface ImageEntry {
  size: number;
  /** The chunk grid: no extent crosses a multiple of it; a full backup stores one chunk per cell. */
  chunkSize: number;
  /** Chunk-grid cells per map page (every page but the last covers this many cells). */
  pageCells: number;
  /** Hex ids of the map-page blobs, in order. */
  pages: string[];
  /** Extents in the map; those with a blob, those of zeros (no blob), and the bytes the former cover. */
  extents: number;
  dataExtents: number;
  zeroExtents: number;
  dataBytes: number;
  /** Change-tracking epoch that began at this point's instant (hex), when the backup was given one. */
  trackingEpoch?: string;
}

export interface DiskEntry extends ImageEntry {
  /** The disk's name within the VM, e.g. `vda`. */
  name: string;
  /** A stable identity for the disk across points (defaults to the name). */
  id: string;
}

export interface MemoryEntry extends ImageEntry {
  /** Hex id of a metadata blob holding the VMM's device state, if saved. */
  deviceState?: string;
}

export interface PointStats {
  bytesRead: number;
  bytesAdded: number;
  chunksNew: number;
  chunksReused: number;
  durationMs: number;
}

export interface PointManifest {
  format: typeof POINT_FORMAT;
  version: number;
  /** The repository id, so a manifest copied into another repository is refused. */
  repository: string;
  createdAt: string;
  parent: string | null;
  vm: { id: string; name: string };
  consistency: Consistency;
  host: string;
  /** Random, so two otherwise identical points get different ids. */
  nonce: string;
  disks: DiskEntry[];
  memory: MemoryEntry | null;
  stats: PointStats;
  labels: Record<string, string>;
}

export function newManifest(fields: Omit<PointManifest, 'format' | 'version' | 'host' | 'nonce' | 'createdAt'> & { createdAt?: string }): PointManifest {
  return {
    format: POINT_FORMAT,
    version: FORMAT_VERSION,
    repository: fields.repository,
    createdAt: fields.createdAt ?? new Date().toISOString(),
    parent: fields.parent,
    vm: fields.vm,
    consistency: fields.consistency,
    host: hostname(),
    nonce: randomBytes(16).toString('hex'),
    disks: fields.disks,
    memory: fields.memory,
    stats: fields.stats,
    labels: fields.labels,
  };
}

/** Chunk-grid cells of an image: ceil(size / chunkSize). */
export function cellCount(image: { size: number; chunkSize: number }): number {
  return Math.ceil(image.size / image.chunkSize);
}

export function pageCount(cells: number, pageCells = MAP_PAGE_CELLS): number {
  return Math.ceil(cells / pageCells);
}

function pointAad(pointId: string): Buffer {
  return Buffer.concat([AAD_POINT, Buffer.from(pointId, 'hex')]);
}

/** The JSON text, the id derived from it, and the stored (sealed) bytes. */
export function encodeManifest(m: PointManifest, sealer: Sealer): { pointId: string; stored: Buffer } {
  const text = Buffer.from(JSON.stringify(m), 'utf8');
  const pointId = createHash('sha256').update(text).digest().subarray(0, POINT_ID_BYTES).toString('hex');
  return { pointId, stored: sealer.seal(text, pointAad(pointId)) };
}

export function decodeManifest(stored: Buffer, pointId: string, sealer: Sealer, repositoryId: string): PointManifest {
  if (!HEX_ID_PATTERN.test(pointId)) throw new FormatError(`'${pointId}' is not a point id`);
  let text: Buffer;
  try {
    text = sealer.open(stored, pointAad(pointId));
  } catch (err) {
    if (err instanceof AuthenticationError) throw new FormatError(`manifest of point ${pointId} failed authentication (damaged or tampered with)`);
    throw err;
  }
  const digest = createHash('sha256').update(text).digest().subarray(0, POINT_ID_BYTES).toString('hex');
  if (digest !== pointId) throw new FormatError(`manifest of point ${pointId} does not hash to its name (damaged)`);
  let m: PointManifest;
  try {
    m = JSON.parse(text.toString('utf8'));
  } catch {
    throw new FormatError(`manifest of point ${pointId} is not valid JSON`);
  }
  if (m.format !== POINT_FORMAT) throw new FormatError(`object points/${pointId} is not a point manifest`);
  if (m.version !== FORMAT_VERSION) throw new FormatError(`point ${pointId} has manifest version ${m.version}; this Lifeboat reads version ${FORMAT_VERSION}`);
  if (m.repository !== repositoryId) throw new FormatError(`point ${pointId} belongs to repository ${m.repository}, not this one`);
  for (const img of [...m.disks, ...(m.memory ? [m.memory] : [])]) {
    const whole = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0;
    if (!whole(img.size) || !whole(img.chunkSize) || img.chunkSize === 0 || !whole(img.pageCells) || img.pageCells === 0 || !Array.isArray(img.pages)) {
      throw new FormatError(`point ${pointId}: an image entry is damaged (size, chunk size, page cells or pages)`);
    }
    if (img.pages.length !== pageCount(cellCount(img), img.pageCells)) {
      throw new FormatError(`point ${pointId}: an image of ${img.size} bytes lists ${img.pages.length} map pages`);
    }
    if (img.extents !== img.dataExtents + img.zeroExtents) throw new FormatError(`point ${pointId}: an image's extent counts disagree`);
  }
  return m;
}

/** Every image of a point, with the label restore and verify use for it. */
/** Identifies an image's extent map by its map pages (content addressed): equal keys, equal maps. */
export function imageMapKey(image: ImageEntry): string {
  return image.pages.join(',');
}

export function pointImages(m: PointManifest): { label: string; image: ImageEntry }[] {
  const out: { label: string; image: ImageEntry }[] = m.disks.map((d) => ({ label: `disk ${d.name}`, image: d }));
  if (m.memory) out.push({ label: 'memory', image: m.memory });
  return out;
}
