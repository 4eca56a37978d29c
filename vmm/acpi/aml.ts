// A small encoder for the ACPI Machine Language (AML) a DSDT needs (ACPI 6.5, chapter 20): names,
// package lengths, Name/Device/Scope/Method, data objects, and resource templates. Every function
// returns the encoded bytes as a plain number array; callers concatenate.

export type Aml = number[];

const NAME_OP = 0x08;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const RETURN_OP = 0xa4;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const ONES_OP = 0xff;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const ROOT_CHAR = 0x5c;
const PARENT_PREFIX = 0x5e;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;

/** A 4-character name segment; shorter names are padded with '_' as ASL does. */
export function nameSeg(seg: string): Aml {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new Error(`invalid AML name segment '${seg}'`);
  const padded = seg.padEnd(4, '_');
  return [...padded].map((c) => c.charCodeAt(0));
}

/** A name path such as "V000", "_SB_.COM1", "\\_SB_" or "^PARENT". */
export function namePath(path: string): Aml {
  let rest = path;
  const prefix: Aml = [];
  if (rest.startsWith('\\')) {
    prefix.push(ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith('^')) {
      prefix.push(PARENT_PREFIX);
      rest = rest.slice(1);
    }
  }
  if (rest === '') return [...prefix, 0x00]; // NullName: the root itself
  const segs = rest.split('.');
  const body = segs.flatMap(nameSeg);
  if (segs.length === 1) return [...prefix, ...body];
  if (segs.length === 2) return [...prefix, DUAL_NAME_PREFIX, ...body];
  if (segs.length > 255) throw new Error(`AML name path '${path}' has too many segments`);
  return [...prefix, MULTI_NAME_PREFIX, segs.length, ...body];
}

/**
 * PkgLength for `contentLength` bytes that follow it; the encoded length counts its own bytes.
 * One byte below 64; otherwise bits 7:6 of the lead byte give the extra byte count, its bits 3:0 the
 * low nibble, and the extra bytes the rest (length >> 4), little-endian.
 */
export function pkgLength(contentLength: number): Aml {
  for (let extra = 0; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (extra === 0 && total < 0x40) return [total];
    if (extra > 0 && total < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new Error(`AML package of ${contentLength} bytes is too large`);
}

function withPkgLength(opcode: Aml, content: Aml): Aml {
  return [...opcode, ...pkgLength(content.length), ...content];
}

/** Name(path, data) */
export function name(path: string, data: Aml): Aml {
  return [NAME_OP, ...namePath(path), ...data];
}

/** Device(path) { body } */
export function device(path: string, body: Aml[]): Aml {
  return withPkgLength([EXT_OP_PREFIX, DEVICE_OP], [...namePath(path), ...body.flat()]);
}

/** Scope(path) { body } */
export function scope(path: string, body: Aml[]): Aml {
  return withPkgLength([SCOPE_OP], [...namePath(path), ...body.flat()]);
}

/** Method(path, argCount, Serialized|NotSerialized) { body } */
export function method(path: string, argCount: number, serialized: boolean, body: Aml[]): Aml {
  if (argCount < 0 || argCount > 7) throw new Error('an AML method takes 0..7 arguments');
  const flags = argCount | (serialized ? 0x08 : 0);
  return withPkgLength([METHOD_OP], [...namePath(path), flags, ...body.flat()]);
}

/** Return(value) */
export function returnValue(value: Aml): Aml {
  return [RETURN_OP, ...value];
}

/** String constant (ASCII, NUL-terminated). */
export function string(text: string): Aml {
  const bytes = [...text].map((c) => {
    const code = c.charCodeAt(0);
    if (code < 0x01 || code > 0x7f) throw new Error(`AML strings are ASCII: ${JSON.stringify(text)}`);
    return code;
  });
  return [STRING_PREFIX, ...bytes, 0x00];
}

/** An integer in its smallest encoding: Zero, One, Ones, then Byte/Word/DWord/QWord constants. */
export function integer(value: number | bigint): Aml {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new Error(`AML integer out of range: ${value}`);
  if (v === 0n) return [ZERO_OP];
  if (v === 1n) return [ONE_OP];
  if (v === 0xffff_ffff_ffff_ffffn) return [ONES_OP];
  if (v <= 0xffn) return byteConst(Number(v));
  if (v <= 0xffffn) return wordConst(Number(v));
  if (v <= 0xffff_ffffn) return dwordConst(Number(v));
  return qwordConst(v);
}

export function byteConst(value: number): Aml {
  return [BYTE_PREFIX, ...le(value, 1)];
}

export function wordConst(value: number): Aml {
  return [WORD_PREFIX, ...le(value, 2)];
}

export function dwordConst(value: number): Aml {
  return [DWORD_PREFIX, ...le(value, 4)];
}

export function qwordConst(value: number | bigint): Aml {
  return [QWORD_PREFIX, ...le(value, 8)];
}

/**
 * EISAID("PNP0501"): three letters packed 5 bits each into 15 bits, then four hex digits, stored
 * big-endian in a DWord constant.
 */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`invalid EISA id '${id}'`);
  const letter = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (letter(0) << 10) | (letter(1) << 5) | letter(2);
  const product = parseInt(id.slice(3), 16);
  const value = ((vendor << 16) | product) >>> 0;
  return [DWORD_PREFIX, (value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
}

/** Package(){ elements } */
export function pkg(elements: Aml[]): Aml {
  if (elements.length > 255) throw new Error('AML Package has more than 255 elements');
  return withPkgLength([PACKAGE_OP], [elements.length, ...elements.flat()]);
}

/** ResourceTemplate(){ descriptors }: a Buffer holding the descriptors and an End Tag. */
export function resourceTemplate(descriptors: Aml[]): Aml {
  const END_TAG = [0x79, 0x00]; // checksum 0: "treat as valid"
  const data = [...descriptors.flat(), ...END_TAG];
  return withPkgLength([BUFFER_OP], [...integer(data.length), ...data]);
}

/** Memory32Fixed(ReadWrite|ReadOnly, base, length) */
export function memory32Fixed(opts: { readWrite: boolean; base: number; length: number }): Aml {
  return [0x86, ...le(9, 2), opts.readWrite ? 1 : 0, ...le(opts.base, 4), ...le(opts.length, 4)];
}

export interface InterruptOptions {
  /** ResourceConsumer (true) or ResourceProducer. */
  consumer: boolean;
  /** Edge (true) or Level triggered. */
  edge: boolean;
  activeLow: boolean;
  shared: boolean;
  gsi: number;
}

/** Interrupt(...) {gsi}: the Extended Interrupt descriptor with one interrupt number. */
export function extendedInterrupt(opts: InterruptOptions): Aml {
  const flags = (opts.consumer ? 1 : 0) | (opts.edge ? 2 : 0) | (opts.activeLow ? 4 : 0) | (opts.shared ? 8 : 0);
  return [0x89, ...le(6, 2), flags, 1, ...le(opts.gsi, 4)];
}

/** IO(Decode16, min, max, alignment, length) */
export function io(opts: { min: number; max: number; alignment: number; length: number }): Aml {
  return [0x47, 0x01, ...le(opts.min, 2), ...le(opts.max, 2), opts.alignment & 0xff, opts.length & 0xff];
}

function le(value: number | bigint, bytes: number): Aml {
  let v = BigInt(value);
  if (v < 0n || v >> BigInt(bytes * 8) !== 0n) throw new Error(`${value} does not fit in ${bytes} bytes`);
  const out: Aml = [];
  for (let i = 0; i < bytes; i++) {
    out.push(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}
