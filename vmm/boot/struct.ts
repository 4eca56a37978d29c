// Declared little-endian binary layouts: one table of named fields per struct (boot_params, ACPI tables),
// so offsets live in one place and are tested, instead of offsets sprinkled through writer code.

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'bytes';

export interface FieldSpec {
  readonly offset: number;
  readonly type: FieldType;
  /** Byte length; implied by the type except for 'bytes'. */
  readonly length?: number;
}

const TYPE_SIZE: Record<Exclude<FieldType, 'bytes'>, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export function fieldLength(field: FieldSpec): number {
  if (field.type === 'bytes') {
    if (field.length === undefined) throw new Error('a bytes field needs a length');
    return field.length;
  }
  return TYPE_SIZE[field.type];
}

export class StructLayout<F extends Record<string, FieldSpec>> {
  constructor(
    readonly name: string,
    readonly size: number,
    readonly fields: F,
  ) {
    for (const [key, field] of Object.entries(fields)) {
      if (field.offset + fieldLength(field) > size) throw new Error(`${name}.${key} runs past the struct's ${size} bytes`);
    }
  }

  offset(field: keyof F): number {
    return this.fields[field]!.offset;
  }

  /** Write an integer field; a value that does not fit the field's width is a bug and throws. */
  set(buf: Uint8Array, field: keyof F, value: number | bigint): void {
    const spec = this.spec(field);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const big = BigInt(value);
    const bits = BigInt(fieldLength(spec) * 8);
    if (big < 0n || big >> bits !== 0n) {
      throw new Error(`${this.name}.${String(field)}: 0x${big.toString(16)} does not fit in ${spec.type}`);
    }
    switch (spec.type) {
      case 'u8': view.setUint8(spec.offset, Number(big)); break;
      case 'u16': view.setUint16(spec.offset, Number(big), true); break;
      case 'u32': view.setUint32(spec.offset, Number(big), true); break;
      case 'u64': view.setBigUint64(spec.offset, big, true); break;
      case 'bytes': throw new Error(`${this.name}.${String(field)} is a byte array: use setBytes`);
    }
  }

  /** Read an integer field as a number (u64 fields must hold a value below 2^53). */
  get(buf: Uint8Array, field: keyof F): number {
    const spec = this.spec(field);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    switch (spec.type) {
      case 'u8': return view.getUint8(spec.offset);
      case 'u16': return view.getUint16(spec.offset, true);
      case 'u32': return view.getUint32(spec.offset, true);
      case 'u64': {
        const v = view.getBigUint64(spec.offset, true);
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.name}.${String(field)} = 0x${v.toString(16)} is too large for a number`);
        return Number(v);
      }
      case 'bytes': throw new Error(`${this.name}.${String(field)} is a byte array: use getBytes`);
    }
  }

  setBytes(buf: Uint8Array, field: keyof F, bytes: Uint8Array): void {
    const spec = this.spec(field);
    if (bytes.length > fieldLength(spec)) throw new Error(`${this.name}.${String(field)}: ${bytes.length} bytes do not fit in ${fieldLength(spec)}`);
    buf.set(bytes, spec.offset);
  }

  getBytes(buf: Uint8Array, field: keyof F): Uint8Array {
    const spec = this.spec(field);
    return buf.subarray(spec.offset, spec.offset + fieldLength(spec));
  }

  private spec(field: keyof F): FieldSpec {
    const spec = this.fields[field];
    if (!spec) throw new Error(`${this.name} has no field ${String(field)}`);
    return spec;
  }
}

/** ASCII bytes of `text`, padded with `pad` (or cut) to exactly `length` bytes. */
export function asciiField(text: string, length: number, pad = 0x20): Uint8Array {
  const out = new Uint8Array(length).fill(pad);
  for (let i = 0; i < Math.min(length, text.length); i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7e || c < 0x20) throw new Error(`non-printable character in ${JSON.stringify(text)}`);
    out[i] = c;
  }
  return out;
}
