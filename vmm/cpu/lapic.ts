// Local APIC setup over the 1024-byte struct kvm_lapic_state (a copy of the APIC register page):
// LINT0 delivers ExtINT (the legacy PIC's output) and LINT1 delivers NMI, as on PC hardware.

export const LAPIC_STATE_SIZE = 1024;
export const APIC_LVT0 = 0x350;
export const APIC_LVT1 = 0x360;
const DELIVERY_MODE_MASK = 0x700;
const DELIVERY_MODE_NMI = 0x400;
const DELIVERY_MODE_EXTINT = 0x700;

/** Patch the state read with KVM_GET_LAPIC in place, before KVM_SET_LAPIC. */
export function applyBootLapic(state: Uint8Array): Uint8Array {
  if (state.length !== LAPIC_STATE_SIZE) throw new Error(`kvm_lapic_state is ${LAPIC_STATE_SIZE} bytes, got ${state.length}`);
  const view = new DataView(state.buffer, state.byteOffset, state.byteLength);
  const setMode = (offset: number, mode: number) => {
    view.setUint32(offset, ((view.getUint32(offset, true) & ~DELIVERY_MODE_MASK) | mode) >>> 0, true);
  };
  setMode(APIC_LVT0, DELIVERY_MODE_EXTINT);
  setMode(APIC_LVT1, DELIVERY_MODE_NMI);
  return state;
}
