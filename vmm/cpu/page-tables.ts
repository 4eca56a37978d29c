// Identity-mapped page tables for the 64-bit entry: the first 1 GiB mapped with 2 MiB pages
// (PML4[0] -> PDPT[0] -> PD[0..511]). The kernel builds its own tables soon after.

import { PAGE_SIZE, PD_ADDR, PDPT_ADDR, PML4_ADDR } from '../layout.js';
import type { GuestWrite } from '../boot/guest-write.js';

const PRESENT = 0x1n;
const WRITABLE = 0x2n;
/** PS: in a page directory entry, maps a 2 MiB page instead of pointing at a page table. */
const LARGE_PAGE = 0x80n;
const ENTRIES = 512;

export function pageTableWrites(): GuestWrite[] {
  const pml4 = new Uint8Array(PAGE_SIZE);
  const pdpt = new Uint8Array(PAGE_SIZE);
  const pd = new Uint8Array(PAGE_SIZE);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(PDPT_ADDR) | PRESENT | WRITABLE, true);
  new DataView(pdpt.buffer).setBigUint64(0, BigInt(PD_ADDR) | PRESENT | WRITABLE, true);
  const pdView = new DataView(pd.buffer);
  for (let i = 0; i < ENTRIES; i++) {
    pdView.setBigUint64(i * 8, (BigInt(i) << 21n) | PRESENT | WRITABLE | LARGE_PAGE, true);
  }
  return [
    { gpa: PML4_ADDR, bytes: pml4 },
    { gpa: PDPT_ADDR, bytes: pdpt },
    { gpa: PD_ADDR, bytes: pd },
  ];
}
