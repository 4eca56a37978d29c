// Row-shaped records the catalog reads and writes. Plain data only: the catalog imports nothing of
// ours, and callers (replication, the agent) adapt their own types to these.

/**
 * How consistent a point's images are: `crash` (copied while the VM ran; like a power cut at an
 * instant), `paused` (taken while the VM was paused), `application` (the guest flushed and agreed),
 * `offline` (the VM was not running).
 */
export const CONSISTENCY_KINDS = ['crash', 'paused', 'application', 'offline'] as const;
export type ConsistencyKind = (typeof CONSISTENCY_KINDS)[number];

export const POINT_STATES = ['complete', 'deleting', 'damaged'] as const;
export type PointState = (typeof POINT_STATES)[number];

export const TARGET_KINDS = ['local', 's3', 'site'] as const;
export type TargetKind = (typeof TARGET_KINDS)[number];

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

export const EVENT_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type EventLevel = (typeof EVENT_LEVELS)[number];

/** Times are ISO-8601 UTC strings with milliseconds (`Date.prototype.toISOString`), so they sort as text. */
export type IsoTime = string;

export interface SiteRecord {
  id: string;
  name: string;
  /** null for the site this catalog lives at. */
  url: string | null;
}

export interface TargetRecord {
  id: string;
  kind: TargetKind;
  /** Printable location (a path, a bucket URL, a site URL); never a secret. */
  location: string;
  siteId: string | null;
}

export interface VmRecord {
  id: string;
  name: string;
  siteId: string | null;
}

export interface DiskRecord {
  vmId: string;
  name: string;
  sizeBytes: number;
}

/**
 * One use of a chunk by a point: the point lists a chunk once per place that needs it (a chunk-grid
 * cell of an image, a map page, the device state), so the same content at several places is listed
 * several times.
 */
export interface ChunkReference {
  id: string;
  /** Plain (uncompressed, unencrypted) length. */
  size: number;
  /** Length as stored on the target (compressed, encrypted, framed). */
  storedSize: number;
  /** The pack holding the chunk, or null when the chunk is stored as its own object. */
  pack: string | null;
}

/** A stored chunk as a rebuild source reports it (from pack indexes), referenced or not. */
export type ChunkRecord = ChunkReference;

/** Everything needed to index one recovery point: what `recordPoint` and rebuild sources take. */
export interface PointRecord {
  id: string;
  vmId: string;
  targetId: string;
  /** The point this one was taken incrementally against; a lineage note, it may since have been pruned. */
  parentId: string | null;
  consistency: ConsistencyKind;
  createdAt: IsoTime;
  /** Bytes of disk contents the point restores (sum of its disks' sizes). */
  logicalBytes: number;
  /** Bytes this point added to the target when it was written. */
  storedBytes: number;
  state: PointState;
  /** The point holds a memory image too (it can be resumed, not only booted). */
  hasMemory: boolean;
  /** The VM's display name, used when the point is the first the catalog hears of the VM. */
  vmName?: string;
  disks: { name: string; sizeBytes: number }[];
  chunks: ChunkReference[];
  /**
   * Optional: which chunks' use counts differ from those of `delta.baseId` (normally the parent). When
   * the base is the newest point the catalog recorded for this VM on this target, recording writes only
   * these chunks; otherwise (or without it) the catalog diffs `chunks` against that newest point itself.
   */
  delta?: PointChunkDelta;
}

/** The chunks whose use count changed between a base point and a point (added, dropped or re-counted). */
export interface PointChunkDelta {
  baseId: string;
  /** Chunk ids (each once); the point's own counts come from `PointRecord.chunks`, or from `references`. */
  changed: string[];
  /**
   * The point's references to its changed chunks (each once per use, as `PointRecord.chunks` lists them).
   * When the catalog trusts the delta it counts these instead of the whole chunk list, which it then never
   * reads (a backup builds that list only if it is read).
   */
  references?: ChunkReference[];
  /**
   * By how much each changed chunk's count changed (the point's count minus the base's; never 0), in
   * the order of `changed`. When the catalog trusts the delta it adds these to the counts of the base
   * (its lineage's open spans) and needs neither `references` nor the whole chunk list. `location` is
   * required for a chunk whose count grew (it may be new to the catalog).
   */
  changes?: ChunkUseChange[];
}

/** One entry of `PointChunkDelta.changes`. */
export interface ChunkUseChange {
  id: string;
  change: number;
  location?: Omit<ChunkReference, 'id'>;
}

/** A recovery point as listed by the catalog (without its chunk list). */
export interface PointRow {
  id: string;
  vmId: string;
  targetId: string;
  parentId: string | null;
  consistency: ConsistencyKind;
  createdAt: IsoTime;
  logicalBytes: number;
  storedBytes: number;
  state: PointState;
  hasMemory: boolean;
}

export interface ChunkRow extends ChunkReference {
  targetId: string;
  /** How many recovery points reference the chunk (each point counts once). */
  refcount: number;
}

export interface PointChunkRow {
  pointId: string;
  chunkId: string;
  /** How many times the point lists the chunk (cells, map pages, device state naming it). */
  uses: number;
}

export interface JobRow {
  id: number;
  kind: string;
  vmId: string | null;
  targetId: string | null;
  state: JobState;
  startedAt: IsoTime;
  finishedAt: IsoTime | null;
  progressDone: number;
  progressTotal: number | null;
  error: string | null;
}

export interface EventInput {
  level: EventLevel;
  kind: string;
  message: string;
  details?: unknown;
  vmId?: string | null;
  jobId?: number | null;
  time?: IsoTime;
}

export interface EventRow {
  id: number;
  time: IsoTime;
  level: EventLevel;
  kind: string;
  message: string;
  details: unknown;
  vmId: string | null;
  jobId: number | null;
}
