// The virtio layouts we declare must be the kernel's: compile a C program against this machine's UAPI
// headers and compare every size and offset.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  Avail,
  BLK_ID_BYTES,
  BlkConfig,
  BlkDiscardSegment,
  BlkFeature,
  BlkReqHeader,
  BlkReqType,
  BlkStatus,
  Desc,
  DescFlag,
  Feature,
  MmioReg,
  Status,
  Used,
} from '../../../vmm/devices/virtio/abi.js';
import { CONFIG_BYTE_OFFSET, MAX_QUEUES, QUEUE_BASE_WORD, STATE_SIZE, TRANSPORT_WORDS } from '../../../vmm/devices/virtio/state.js';

const C_PROGRAM = String.raw`
#include <stdio.h>
#include <stddef.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#define P(name, value) printf("\"%s\": %lu,\n", name, (unsigned long)(value))
int main(void) {
  printf("{\n");
  P("desc.size", sizeof(struct vring_desc));
  P("desc.addr", offsetof(struct vring_desc, addr));
  P("desc.len", offsetof(struct vring_desc, len));
  P("desc.flags", offsetof(struct vring_desc, flags));
  P("desc.next", offsetof(struct vring_desc, next));
  P("avail.flags", offsetof(struct vring_avail, flags));
  P("avail.idx", offsetof(struct vring_avail, idx));
  P("avail.ring", offsetof(struct vring_avail, ring));
  P("used.flags", offsetof(struct vring_used, flags));
  P("used.idx", offsetof(struct vring_used, idx));
  P("used.ring", offsetof(struct vring_used, ring));
  P("used_elem.size", sizeof(struct vring_used_elem));
  P("used_elem.len", offsetof(struct vring_used_elem, len));
  P("vring_size_256", vring_size(256, 4096));
  P("outhdr.size", sizeof(struct virtio_blk_outhdr));
  P("outhdr.type", offsetof(struct virtio_blk_outhdr, type));
  P("outhdr.ioprio", offsetof(struct virtio_blk_outhdr, ioprio));
  P("outhdr.sector", offsetof(struct virtio_blk_outhdr, sector));
  P("dwz.size", sizeof(struct virtio_blk_discard_write_zeroes));
  P("dwz.sector", offsetof(struct virtio_blk_discard_write_zeroes, sector));
  P("dwz.num_sectors", offsetof(struct virtio_blk_discard_write_zeroes, num_sectors));
  P("dwz.flags", offsetof(struct virtio_blk_discard_write_zeroes, flags));
  P("cfg.capacity", offsetof(struct virtio_blk_config, capacity));
  P("cfg.size_max", offsetof(struct virtio_blk_config, size_max));
  P("cfg.seg_max", offsetof(struct virtio_blk_config, seg_max));
  P("cfg.geometry", offsetof(struct virtio_blk_config, geometry));
  P("cfg.blk_size", offsetof(struct virtio_blk_config, blk_size));
  P("cfg.physical_block_exp", offsetof(struct virtio_blk_config, physical_block_exp));
  P("cfg.alignment_offset", offsetof(struct virtio_blk_config, alignment_offset));
  P("cfg.min_io_size", offsetof(struct virtio_blk_config, min_io_size));
  P("cfg.opt_io_size", offsetof(struct virtio_blk_config, opt_io_size));
  P("cfg.wce", offsetof(struct virtio_blk_config, wce));
  P("cfg.num_queues", offsetof(struct virtio_blk_config, num_queues));
  P("cfg.max_discard_sectors", offsetof(struct virtio_blk_config, max_discard_sectors));
  P("cfg.max_discard_seg", offsetof(struct virtio_blk_config, max_discard_seg));
  P("cfg.discard_sector_alignment", offsetof(struct virtio_blk_config, discard_sector_alignment));
  P("cfg.max_write_zeroes_sectors", offsetof(struct virtio_blk_config, max_write_zeroes_sectors));
  P("cfg.max_write_zeroes_seg", offsetof(struct virtio_blk_config, max_write_zeroes_seg));
  P("cfg.write_zeroes_may_unmap", offsetof(struct virtio_blk_config, write_zeroes_may_unmap));
  P("cfg.max_secure_erase_sectors", offsetof(struct virtio_blk_config, max_secure_erase_sectors));
  P("mmio.MAGIC_VALUE", VIRTIO_MMIO_MAGIC_VALUE); P("mmio.VERSION", VIRTIO_MMIO_VERSION);
  P("mmio.DEVICE_ID", VIRTIO_MMIO_DEVICE_ID); P("mmio.VENDOR_ID", VIRTIO_MMIO_VENDOR_ID);
  P("mmio.DEVICE_FEATURES", VIRTIO_MMIO_DEVICE_FEATURES); P("mmio.DEVICE_FEATURES_SEL", VIRTIO_MMIO_DEVICE_FEATURES_SEL);
  P("mmio.DRIVER_FEATURES", VIRTIO_MMIO_DRIVER_FEATURES); P("mmio.DRIVER_FEATURES_SEL", VIRTIO_MMIO_DRIVER_FEATURES_SEL);
  P("mmio.QUEUE_SEL", VIRTIO_MMIO_QUEUE_SEL); P("mmio.QUEUE_NUM_MAX", VIRTIO_MMIO_QUEUE_NUM_MAX);
  P("mmio.QUEUE_NUM", VIRTIO_MMIO_QUEUE_NUM); P("mmio.QUEUE_READY", VIRTIO_MMIO_QUEUE_READY);
  P("mmio.QUEUE_NOTIFY", VIRTIO_MMIO_QUEUE_NOTIFY); P("mmio.INTERRUPT_STATUS", VIRTIO_MMIO_INTERRUPT_STATUS);
  P("mmio.INTERRUPT_ACK", VIRTIO_MMIO_INTERRUPT_ACK); P("mmio.STATUS", VIRTIO_MMIO_STATUS);
  P("mmio.QUEUE_DESC_LOW", VIRTIO_MMIO_QUEUE_DESC_LOW); P("mmio.QUEUE_DESC_HIGH", VIRTIO_MMIO_QUEUE_DESC_HIGH);
  P("mmio.QUEUE_AVAIL_LOW", VIRTIO_MMIO_QUEUE_AVAIL_LOW); P("mmio.QUEUE_AVAIL_HIGH", VIRTIO_MMIO_QUEUE_AVAIL_HIGH);
  P("mmio.QUEUE_USED_LOW", VIRTIO_MMIO_QUEUE_USED_LOW); P("mmio.QUEUE_USED_HIGH", VIRTIO_MMIO_QUEUE_USED_HIGH);
  P("mmio.CONFIG_GENERATION", VIRTIO_MMIO_CONFIG_GENERATION); P("mmio.CONFIG", VIRTIO_MMIO_CONFIG);
  P("status.ACKNOWLEDGE", VIRTIO_CONFIG_S_ACKNOWLEDGE); P("status.DRIVER", VIRTIO_CONFIG_S_DRIVER);
  P("status.DRIVER_OK", VIRTIO_CONFIG_S_DRIVER_OK); P("status.FEATURES_OK", VIRTIO_CONFIG_S_FEATURES_OK);
  P("status.NEEDS_RESET", VIRTIO_CONFIG_S_NEEDS_RESET); P("status.FAILED", VIRTIO_CONFIG_S_FAILED);
  P("feature.VERSION_1", VIRTIO_F_VERSION_1); P("feature.RING_INDIRECT_DESC", VIRTIO_RING_F_INDIRECT_DESC);
  P("feature.RING_EVENT_IDX", VIRTIO_RING_F_EVENT_IDX);
  P("blk.SIZE_MAX", VIRTIO_BLK_F_SIZE_MAX); P("blk.SEG_MAX", VIRTIO_BLK_F_SEG_MAX); P("blk.RO", VIRTIO_BLK_F_RO);
  P("blk.BLK_SIZE", VIRTIO_BLK_F_BLK_SIZE); P("blk.FLUSH", VIRTIO_BLK_F_FLUSH); P("blk.MQ", VIRTIO_BLK_F_MQ);
  P("blk.DISCARD", VIRTIO_BLK_F_DISCARD); P("blk.WRITE_ZEROES", VIRTIO_BLK_F_WRITE_ZEROES);
  P("t.IN", VIRTIO_BLK_T_IN); P("t.OUT", VIRTIO_BLK_T_OUT); P("t.FLUSH", VIRTIO_BLK_T_FLUSH);
  P("t.GET_ID", VIRTIO_BLK_T_GET_ID); P("t.DISCARD", VIRTIO_BLK_T_DISCARD); P("t.WRITE_ZEROES", VIRTIO_BLK_T_WRITE_ZEROES);
  P("s.OK", VIRTIO_BLK_S_OK); P("s.IOERR", VIRTIO_BLK_S_IOERR); P("s.UNSUPP", VIRTIO_BLK_S_UNSUPP);
  P("id_bytes", VIRTIO_BLK_ID_BYTES);
  P("desc.F_NEXT", VRING_DESC_F_NEXT); P("desc.F_WRITE", VRING_DESC_F_WRITE); P("desc.F_INDIRECT", VRING_DESC_F_INDIRECT);
  printf("\"end\": 0\n}\n");
  return 0;
}
`;

describe('virtio binary layouts match the kernel UAPI headers', () => {
  let kernel: Record<string, number>;

  before(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-virtio-abi-'));
    try {
      fs.writeFileSync(path.join(dir, 'abi.c'), C_PROGRAM);
      execFileSync('gcc', ['-o', path.join(dir, 'abi'), path.join(dir, 'abi.c')], { stdio: 'pipe' });
      kernel = JSON.parse(execFileSync(path.join(dir, 'abi'), { encoding: 'utf8' })) as Record<string, number>;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('descriptors, avail and used rings', () => {
    assert.equal(Desc.SIZE, kernel['desc.size']);
    assert.equal(Desc.ADDR, kernel['desc.addr']);
    assert.equal(Desc.LEN, kernel['desc.len']);
    assert.equal(Desc.FLAGS, kernel['desc.flags']);
    assert.equal(Desc.NEXT, kernel['desc.next']);
    assert.equal(Avail.FLAGS, kernel['avail.flags']);
    assert.equal(Avail.IDX, kernel['avail.idx']);
    assert.equal(Avail.RING, kernel['avail.ring']);
    assert.equal(Used.FLAGS, kernel['used.flags']);
    assert.equal(Used.IDX, kernel['used.idx']);
    assert.equal(Used.RING, kernel['used.ring']);
    assert.equal(Used.ELEM_SIZE, kernel['used_elem.size']);
    assert.equal(Used.ELEM_LEN, kernel['used_elem.len']);
    // The legacy contiguous layout: descriptors, avail (with used_event), padding to 4096, used (with avail_event).
    const legacy = Math.ceil((Desc.SIZE * 256 + Avail.size(256)) / 4096) * 4096 + Used.size(256);
    assert.equal(legacy, kernel['vring_size_256']);
    assert.deepEqual(DescFlag, { NEXT: kernel['desc.F_NEXT'], WRITE: kernel['desc.F_WRITE'], INDIRECT: kernel['desc.F_INDIRECT'] });
  });

  it('virtio-blk request header, discard/write-zeroes segment and config space', () => {
    assert.equal(BlkReqHeader.SIZE, kernel['outhdr.size']);
    assert.equal(BlkReqHeader.TYPE, kernel['outhdr.type']);
    assert.equal(BlkReqHeader.IOPRIO, kernel['outhdr.ioprio']);
    assert.equal(BlkReqHeader.SECTOR, kernel['outhdr.sector']);
    assert.equal(BlkDiscardSegment.SIZE, kernel['dwz.size']);
    assert.equal(BlkDiscardSegment.SECTOR, kernel['dwz.sector']);
    assert.equal(BlkDiscardSegment.NUM_SECTORS, kernel['dwz.num_sectors']);
    assert.equal(BlkDiscardSegment.FLAGS, kernel['dwz.flags']);
    const cfg: [number, string][] = [
      [BlkConfig.CAPACITY, 'capacity'],
      [BlkConfig.SIZE_MAX, 'size_max'],
      [BlkConfig.SEG_MAX, 'seg_max'],
      [BlkConfig.GEOMETRY, 'geometry'],
      [BlkConfig.BLK_SIZE, 'blk_size'],
      [BlkConfig.PHYSICAL_BLOCK_EXP, 'physical_block_exp'],
      [BlkConfig.ALIGNMENT_OFFSET, 'alignment_offset'],
      [BlkConfig.MIN_IO_SIZE, 'min_io_size'],
      [BlkConfig.OPT_IO_SIZE, 'opt_io_size'],
      [BlkConfig.WRITEBACK, 'wce'],
      [BlkConfig.NUM_QUEUES, 'num_queues'],
      [BlkConfig.MAX_DISCARD_SECTORS, 'max_discard_sectors'],
      [BlkConfig.MAX_DISCARD_SEG, 'max_discard_seg'],
      [BlkConfig.DISCARD_SECTOR_ALIGNMENT, 'discard_sector_alignment'],
      [BlkConfig.MAX_WRITE_ZEROES_SECTORS, 'max_write_zeroes_sectors'],
      [BlkConfig.MAX_WRITE_ZEROES_SEG, 'max_write_zeroes_seg'],
      [BlkConfig.WRITE_ZEROES_MAY_UNMAP, 'write_zeroes_may_unmap'],
      [BlkConfig.SIZE, 'max_secure_erase_sectors'],
    ];
    for (const [ours, name] of cfg) assert.equal(ours, kernel[`cfg.${name}`], `config field ${name}`);
    assert.equal(BLK_ID_BYTES, kernel['id_bytes']);
  });

  it('virtio-mmio registers, status bits, feature bits, request types and statuses', () => {
    for (const [name, off] of Object.entries(MmioReg)) assert.equal(off, kernel[`mmio.${name}`], `register ${name}`);
    for (const [name, bit] of Object.entries(Status)) assert.equal(bit, kernel[`status.${name}`], `status ${name}`);
    for (const [name, bit] of Object.entries(Feature)) assert.equal(bit, kernel[`feature.${name}`], `feature ${name}`);
    for (const [name, bit] of Object.entries(BlkFeature)) assert.equal(bit, kernel[`blk.${name}`], `blk feature ${name}`);
    for (const [name, t] of Object.entries(BlkReqType)) assert.equal(t, kernel[`t.${name}`], `request type ${name}`);
    for (const [name, s] of Object.entries(BlkStatus)) assert.equal(s, kernel[`s.${name}`], `status ${name}`);
  });

  it('the shared device state: transport words, queue blocks and config space do not overlap', () => {
    const lastTransportWord = Math.max(...Object.values(TRANSPORT_WORDS));
    assert.ok(lastTransportWord < QUEUE_BASE_WORD, 'transport words end before the queue blocks');
    assert.equal(CONFIG_BYTE_OFFSET, (QUEUE_BASE_WORD + MAX_QUEUES * 16) * 4);
    assert.ok(CONFIG_BYTE_OFFSET + BlkConfig.SIZE <= STATE_SIZE);
    // As documented in docs/virtio.md "Shared device state".
    assert.equal(STATE_SIZE, 896);
    assert.deepEqual(TRANSPORT_WORDS, {
      status: 1, deviceFeaturesSel: 2, driverFeaturesSel: 3, driverFeaturesLo: 4, driverFeaturesHi: 5,
      deviceFeaturesLo: 6, deviceFeaturesHi: 7, deviceId: 8, numQueues: 9, queueNumMax: 10, queueSel: 11,
      interruptStatus: 12, configGeneration: 13, configSize: 14, epoch: 15, ioServing: 16, ioWorkerRunning: 17,
      closed: 18, notifyRegisterWrites: 19, requestsCompleted: 20, interruptsSent: 21,
    });
  });
});
