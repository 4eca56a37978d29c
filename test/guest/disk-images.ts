// Sparse raw disk images in a per-test temporary folder, removed afterwards.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sparseImage } from '../helpers/image-files.js';

export class ImageDir {
  readonly dir = mkdtempSync(join(tmpdir(), 'lifeboat-guest-'));

  /** Creates a sparse image of the given size. */
  create(name: string, bytes: number): string {
    return sparseImage(join(this.dir, name), bytes);
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
