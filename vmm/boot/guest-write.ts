/** Bytes the VMM copies into guest memory at a guest physical address. */
export interface GuestWrite {
  readonly gpa: number;
  readonly bytes: Uint8Array;
}
