// Device state that every vCPU worker, the I/O worker and the main thread share: a SharedArrayBuffer
// whose first word is a lock. Devices declare their register layout once (field -> 32-bit word index)
// and access it through a SharedWords view.

const LOCK_WORD = 0;
const UNLOCKED = 0;
const LOCKED = 1;
const CONTENDED = 2;

/** Layout: a name -> word index table. Word 0 is reserved for the lock. */
export type WordLayout = Readonly<Record<string, number>>;

export function layoutSizeBytes(layout: WordLayout, extraBytes = 0): number {
  const words = Math.max(0, ...Object.values(layout)) + 1;
  return words * 4 + extraBytes;
}

/** Builds a layout from field names in order, starting after the lock word. */
export function wordLayout<const N extends readonly string[]>(names: N): { readonly [K in N[number]]: number } {
  const out: Record<string, number> = {};
  names.forEach((n, i) => (out[n] = i + 1));
  return out as { readonly [K in N[number]]: number };
}

export class SharedWords<L extends WordLayout> {
  readonly words: Int32Array;

  constructor(readonly sab: SharedArrayBuffer, readonly layout: L) {
    this.words = new Int32Array(sab, 0, Math.floor(sab.byteLength / 4));
  }

  static allocate<L extends WordLayout>(layout: L, extraBytes = 0): SharedWords<L> {
    return new SharedWords(new SharedArrayBuffer(layoutSizeBytes(layout, extraBytes)), layout);
  }

  get(field: keyof L & string): number {
    return Atomics.load(this.words, this.layout[field]!) >>> 0;
  }

  set(field: keyof L & string, value: number): void {
    Atomics.store(this.words, this.layout[field]!, value | 0);
  }

  or(field: keyof L & string, bits: number): number {
    return Atomics.or(this.words, this.layout[field]!, bits | 0) >>> 0;
  }

  and(field: keyof L & string, bits: number): number {
    return Atomics.and(this.words, this.layout[field]!, bits | 0) >>> 0;
  }

  /** Whether nobody holds the lock at this instant (a sequentially consistent read of the lock word). */
  isUnlocked(): boolean {
    return Atomics.load(this.words, LOCK_WORD) === UNLOCKED;
  }

  /** Runs `fn` holding the state's lock (a futex-style mutex; safe across threads, not re-entrant). */
  locked<T>(fn: () => T): T {
    const w = this.words;
    let c = Atomics.compareExchange(w, LOCK_WORD, UNLOCKED, LOCKED);
    if (c !== UNLOCKED) {
      if (c !== CONTENDED) c = Atomics.exchange(w, LOCK_WORD, CONTENDED);
      while (c !== UNLOCKED) {
        Atomics.wait(w, LOCK_WORD, CONTENDED);
        c = Atomics.exchange(w, LOCK_WORD, CONTENDED);
      }
    }
    try {
      return fn();
    } finally {
      if (Atomics.sub(w, LOCK_WORD, 1) !== LOCKED) {
        Atomics.store(w, LOCK_WORD, UNLOCKED);
        Atomics.notify(w, LOCK_WORD, 1);
      }
    }
  }
}
