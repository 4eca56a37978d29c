// virtio-mmio v2 transport and virtio-blk: the integration surface the VMM builder uses.
//   main thread:  VirtioBlockSet.open(specs, ctx) -> .descriptors() / .acpiDevices() / .start() / .stop()
//   vCPU workers: createVirtioBusDevice(descriptor) -> BusDevice
// See docs/virtio.md.
export { VirtioBlockSet } from './block-set.js';
export type { AcpiVirtioDevice, BlockDiskInfo, BlockDiskStats, DiskSpec, QuiesceOptions, VirtioContext, VirtioVm } from './block-set.js';
export { createVirtioBusDevice, VirtioMmioTransport } from './mmio.js';
export type { VirtioMmioDescriptor } from './mmio.js';
export { DiskImageError, defaultSerial } from './image.js';
export { OBSERVER_FACTORY_EXPORT } from './observer.js';
export type { BlockWriteObserver, BlockWriteObserverFactory, ObservedDisk, ObserverDescriptor } from './observer.js';
