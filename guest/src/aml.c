/* A small AML walker: enough of the ACPI namespace encoding to find Device objects with their _HID
 * and _CRS (Memory32Fixed, IO, IRQ, Extended Interrupt) and the \_S5 sleep package. Anything it
 * cannot parse ends the walk of the enclosing scope (counted in platform.aml_skipped), never the boot. */
#include "acpi.h"
#include "lib.h"

enum { V_NONE, V_INT, V_STR, V_BUF, V_PKG };
struct value {
  int kind;
  u64 num;
  const u8 *start, *end; /* string bytes, buffer bytes, or package elements */
  const char *str;
};

struct device_ctx {
  char name[5];
  char hid[9];
  const u8 *crs, *crs_end;
};

static bool pkg_length(const u8 **pp, const u8 *end, const u8 **obj_end) {
  const u8 *start = *pp;
  if (start >= end) return false;
  u8 lead = start[0];
  u32 extra = lead >> 6;
  if (start + 1 + extra > end) return false;
  usize len = extra ? (usize)(lead & 0x0F) : (usize)(lead & 0x3F);
  for (u32 i = 0; i < extra; i++) len |= (usize)start[1 + i] << (4 + 8 * i);
  if (len < 1 + extra || start + len > end) return false;
  *obj_end = start + len;
  *pp = start + 1 + extra;
  return true;
}

static bool name_seg(const u8 *p, const u8 *end) {
  if (p + 4 > end) return false;
  if (!((p[0] >= 'A' && p[0] <= 'Z') || p[0] == '_')) return false;
  for (int i = 1; i < 4; i++)
    if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_')) return false;
  return true;
}

static bool name_string(const u8 **pp, const u8 *end, char last[5]) {
  const u8 *p = *pp;
  memset(last, 0, 5);
  while (p < end && (*p == '\\' || *p == '^')) p++;
  if (p >= end) return false;
  u32 segs;
  if (*p == 0x00) {
    *pp = p + 1;
    return true;
  } else if (*p == 0x2E) {
    segs = 2, p++;
  } else if (*p == 0x2F) {
    if (p + 2 > end) return false;
    segs = p[1], p += 2;
  } else {
    segs = 1;
  }
  for (u32 i = 0; i < segs; i++, p += 4) {
    if (!name_seg(p, end)) return false;
    memcpy(last, p, 4);
  }
  *pp = p;
  return true;
}

static bool data_object(const u8 **pp, const u8 *end, struct value *v) {
  const u8 *p = *pp;
  if (p >= end) return false;
  memset(v, 0, sizeof *v);
  u8 op = *p++;
  u32 width = 0;
  switch (op) {
    case 0x00: v->kind = V_INT, v->num = 0; break;
    case 0x01: v->kind = V_INT, v->num = 1; break;
    case 0xFF: v->kind = V_INT, v->num = ~0UL; break;
    case 0x0A: width = 1; break;
    case 0x0B: width = 2; break;
    case 0x0C: width = 4; break;
    case 0x0E: width = 8; break;
    case 0x0D: {
      const u8 *s = p;
      while (p < end && *p) p++;
      if (p >= end) return false;
      v->kind = V_STR, v->start = s, v->end = p, v->str = (const char *)s;
      p++;
      break;
    }
    case 0x11:
    case 0x12:
    case 0x13: {
      const u8 *obj_end;
      if (!pkg_length(&p, end, &obj_end)) return false;
      if (op == 0x11) {
        struct value size;
        if (!data_object(&p, obj_end, &size) || size.kind != V_INT) return false;
        v->kind = V_BUF;
      } else {
        if (op == 0x12) p++; /* NumElements byte */
        else {
          struct value count;
          if (!data_object(&p, obj_end, &count)) return false;
        }
        v->kind = V_PKG;
      }
      v->start = p, v->end = obj_end;
      p = obj_end;
      break;
    }
    default:
      return false;
  }
  if (width) {
    if (p + width > end) return false;
    v->kind = V_INT;
    for (u32 i = 0; i < width; i++) v->num |= (u64)p[i] << (8 * i);
    p += width;
  }
  *pp = p;
  return true;
}

/* EISA id (compressed, as EISAID() encodes it) to its 7-character string. */
static void eisa_id_string(u32 id, char out[9]) {
  u32 v = (id & 0xFF) << 24 | (id & 0xFF00) << 8 | (id >> 8 & 0xFF00) | id >> 24;
  const char *hex = "0123456789ABCDEF";
  out[0] = (char)('@' + ((v >> 26) & 0x1F));
  out[1] = (char)('@' + ((v >> 21) & 0x1F));
  out[2] = (char)('@' + ((v >> 16) & 0x1F));
  for (int i = 0; i < 4; i++) out[3 + i] = hex[(v >> (12 - 4 * i)) & 0xF];
  out[7] = 0;
}

static void set_hid(struct device_ctx *d, const struct value *v) {
  if (v->kind == V_STR) {
    usize n = MIN((usize)(v->end - v->start), sizeof d->hid - 1);
    memcpy(d->hid, v->str, n);
    d->hid[n] = 0;
  } else if (v->kind == V_INT) {
    eisa_id_string((u32)v->num, d->hid);
  }
}

static void parse_resources(const u8 *p, const u8 *end, struct acpi_device *out) {
  while (p < end) {
    u8 tag = *p;
    if (!(tag & 0x80)) {
      u8 type = (tag >> 3) & 0xF, len = tag & 7;
      const u8 *b = p + 1;
      if (b + len > end) return;
      if (type == 0xF) return; /* End Tag */
      if (type == 0x4 && len >= 2) { /* IRQ */
        u16 mask = (u16)(b[0] | b[1] << 8);
        for (u8 irq = 0; irq < 16; irq++)
          if (mask & (1u << irq)) {
            out->irq = acpi_isa_irq(irq);
            if (len >= 3) {
              out->irq.level = !(b[2] & 1);
              out->irq.active_low = (b[2] & 8) != 0;
            }
            break;
          }
      } else if (type == 0x8 && len >= 7) { /* I/O port */
        if (!out->io_base) out->io_base = (u16)(b[1] | b[2] << 8);
      } else if (type == 0x9 && len >= 3) { /* Fixed I/O port */
        if (!out->io_base) out->io_base = (u16)((b[0] | b[1] << 8) & 0x3FF);
      }
      p = b + len;
    } else {
      if (p + 3 > end) return;
      u16 len = (u16)(p[1] | p[2] << 8);
      const u8 *b = p + 3;
      if (b + len > end) return;
      u8 type = tag & 0x7F;
      if (type == 0x06 && len >= 9) { /* Memory32Fixed */
        if (!out->mmio_size) {
          out->mmio_base = (u32)(b[1] | b[2] << 8 | b[3] << 16 | (u32)b[4] << 24);
          out->mmio_size = (u32)(b[5] | b[6] << 8 | b[7] << 16 | (u32)b[8] << 24);
        }
      } else if (type == 0x09 && len >= 6 && !out->irq.present) { /* Extended Interrupt */
        out->irq.present = true;
        out->irq.level = !(b[0] & 2);
        out->irq.active_low = (b[0] & 4) != 0;
        out->irq.gsi = (u32)(b[2] | b[3] << 8 | b[4] << 16 | (u32)b[5] << 24);
      }
      p = b + len;
    }
  }
}

static void finish_device(struct device_ctx *d) {
  struct acpi_device dev;
  memset(&dev, 0, sizeof dev);
  memcpy(dev.name, d->name, 5);
  memcpy(dev.hid, d->hid, sizeof dev.hid);
  if (d->crs) parse_resources(d->crs, d->crs_end, &dev);
  if (strcmp(d->hid, "LNRO0005") == 0) {
    if (dev.mmio_size && platform.virtio_count < MAX_MMIO_DEVICES) platform.virtio[platform.virtio_count++] = dev;
  } else if (strcmp(d->hid, "PNP0501") == 0) {
    if (!platform.com1_found || dev.io_base == COM1_DEFAULT_PORT) {
      platform.com1 = dev;
      platform.com1_found = true;
    }
  }
}

static void walk(const u8 *p, const u8 *end, struct device_ctx *dev);

static bool walk_one(const u8 **pp, const u8 *end, struct device_ctx *dev) {
  const u8 *p = *pp, *obj_end;
  char seg[5];
  struct value v;
  u8 op = *p++;
  switch (op) {
    case 0x10: /* Scope */
      if (!pkg_length(&p, end, &obj_end) || !name_string(&p, obj_end, seg)) return false;
      walk(p, obj_end, NULL);
      p = obj_end;
      break;
    case 0x08: /* Name */
      if (!name_string(&p, end, seg) || !data_object(&p, end, &v)) return false;
      if (dev && strcmp(seg, "_HID") == 0) set_hid(dev, &v);
      else if (dev && strcmp(seg, "_CRS") == 0 && v.kind == V_BUF) dev->crs = v.start, dev->crs_end = v.end;
      else if (strcmp(seg, "_S5_") == 0 && v.kind == V_PKG) {
        const u8 *q = v.start;
        struct value typ;
        if (data_object(&q, v.end, &typ) && typ.kind == V_INT) {
          platform.s5_found = true;
          platform.s5_slp_typ = (u8)typ.num;
        }
      }
      break;
    case 0x14: /* Method: only `Return (constant)` bodies of _HID/_CRS matter */
      if (!pkg_length(&p, end, &obj_end) || !name_string(&p, obj_end, seg)) return false;
      if (dev && p + 2 < obj_end && p[1] == 0xA4) {
        const u8 *q = p + 2;
        if (data_object(&q, obj_end, &v)) {
          if (strcmp(seg, "_HID") == 0) set_hid(dev, &v);
          else if (strcmp(seg, "_CRS") == 0 && v.kind == V_BUF) dev->crs = v.start, dev->crs_end = v.end;
        }
      }
      p = obj_end;
      break;
    case 0xA0: /* If */
    case 0xA1: /* Else */
    case 0xA2: /* While */
      if (!pkg_length(&p, end, &obj_end)) return false;
      p = obj_end;
      break;
    case 0x06: /* Alias */
      if (!name_string(&p, end, seg) || !name_string(&p, end, seg)) return false;
      break;
    case 0x15: /* External */
      if (!name_string(&p, end, seg) || p + 2 > end) return false;
      p += 2;
      break;
    case 0x5B: {
      if (p >= end) return false;
      u8 ext = *p++;
      switch (ext) {
        case 0x82: { /* Device */
          struct device_ctx d;
          memset(&d, 0, sizeof d);
          if (!pkg_length(&p, end, &obj_end) || !name_string(&p, obj_end, d.name)) return false;
          walk(p, obj_end, &d);
          finish_device(&d);
          p = obj_end;
          break;
        }
        case 0x80: /* OperationRegion: name, space, offset, length */
          if (!name_string(&p, end, seg) || p >= end) return false;
          p++;
          if (!data_object(&p, end, &v) || !data_object(&p, end, &v)) return false;
          break;
        case 0x81: /* Field */
        case 0x83: /* Processor */
        case 0x84: /* PowerResource */
        case 0x85: /* ThermalZone */
        case 0x86: /* IndexField */
        case 0x87: /* BankField */
          if (!pkg_length(&p, end, &obj_end)) return false;
          p = obj_end;
          break;
        case 0x01: /* Mutex */
          if (!name_string(&p, end, seg) || p >= end) return false;
          p++;
          break;
        case 0x02: /* Event */
          if (!name_string(&p, end, seg)) return false;
          break;
        default:
          return false;
      }
      break;
    }
    default:
      return false;
  }
  *pp = p;
  return true;
}

static void walk(const u8 *p, const u8 *end, struct device_ctx *dev) {
  while (p < end) {
    if (!walk_one(&p, end, dev)) {
      platform.aml_skipped++;
      return;
    }
  }
}

void aml_walk_table(const u8 *aml, usize len) { walk(aml, aml + len, NULL); }
