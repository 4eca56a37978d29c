// The narrow public API of vmm/: what the CLI, the agent and the tracking/snapshot code use.
export { BootError } from './boot/errors.js';
export { GuestConsole } from './console.js';
export { ControlSocket, controlRequest, type ControlHandlers, type ControlRequest, type ControlResponse } from './control-socket.js';
export { VmmError } from './kvm/errors.js';
export { KVM_DEVICE_ENV, kvmDevicePath } from './kvm/system.js';
export type { VmFd, VmState } from './kvm/vm.js';
export {
  bootMachine, runVm, Machine, GUEST_READY_PREFIX, SHELL_PROMPT,
  type BootOptions, type MachineExit, type MachineStatus, type RunOptions, type RunResult,
} from './machine.js';
export type { GuestMemory, MemoryRegion } from './memory.js';
export { prewarmForCommand, prewarmVcpuWorkers } from './vcpu-prewarm.js';
export type { VcpuState } from './vcpu-state.js';
export type { VcpuSet } from './vcpus.js';
export {
  DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, cmdlineValue, parseDiskSpec, validateConfig,
  type DiskSpec, type ValidatedConfig, type ValidatedDisk, type VmConfig,
} from './vm-config.js';
