// A WebM file (one AV1 video track) from decrypted video packets, built in the browser. A mirror
// of Sources/Video/WebMWriter.swift and WebMAV1Config.swift (docs/VIDEO.md "The WebM file"),
// written from RFC 8794 (EBML), RFC 9559 (Matroska), the WebM container guidelines, the Matroska
// AV1 codec mapping and AV1-ISOBMFF §2.3.3 (av1C):
//
//   EBML header   DocType webm, DocTypeVersion 4, DocTypeReadVersion 2
//   Segment       (8-byte size, patched at finish)
//     SeekHead    → Info, Tracks, Cues (8-byte positions)
//     Info        TimestampScale 1 ms; Duration (8-byte float); DateUTC of the first packet
//     Tracks      TrackEntry 1: video, V_AV1, CodecPrivate av1C, PixelWidth/Height, Colour
//     Cluster*    a new Cluster at every keyframe and when a block would be > 32,767 ms after
//                 its Cluster's Timestamp; SimpleBlocks (keyframe flag on keyframes); blocks
//                 carry the packet's OBUs without Temporal Delimiter and Padding OBUs
//     Cues        one CuePoint per keyframe

export class WebMError extends Error {
  constructor(message) { super(message); this.name = "WebMError"; }
}

// ---- AV1 (AV1 Bitstream & Decoding Process Specification §5) ----

const OBU = { sequenceHeader: 1, temporalDelimiter: 2, frameHeader: 3, frame: 6, tileList: 8, padding: 15 };

function leb128(b, at) {
  let value = 0;
  for (let k = 0; k < 8; k++) {
    if (at + k >= b.length) return null;
    const x = b[at + k];
    value += (x & 0x7f) * 2 ** (7 * k);
    if (!(x & 0x80)) return value <= 0xffffffff ? { value, length: k + 1 } : null;
  }
  return null;
}

function leb128Bytes(value) {
  const out = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value) b |= 0x80;
    out.push(b);
  } while (value);
  return out;
}

/** The OBUs of one temporal unit: [{type, start, payloadStart, end}]. Throws WebMError. */
export function splitOBUs(b) {
  const obus = [];
  let i = 0;
  while (i < b.length) {
    const h = b[i];
    if (h & 0x80) throw new WebMError(`AV1 temporal unit of ${b.length} bytes: OBU at byte ${i} has the forbidden bit set`);
    const type = (h >> 3) & 0x0f;
    let p = i + (h & 0x04 ? 2 : 1);
    if (p > b.length) throw new WebMError(`AV1 temporal unit: OBU header at byte ${i} is cut off`);
    let size;
    if (h & 0x02) {
      const l = leb128(b, p);
      if (!l) throw new WebMError(`AV1 temporal unit: obu_size at byte ${p} is not a leb128 value`);
      size = l.value;
      p += l.length;
    } else size = b.length - p;
    if (size > b.length - p) throw new WebMError(`AV1 temporal unit: OBU at byte ${i} claims ${size} bytes, ${b.length - p} are left`);
    obus.push({ type, start: i, payloadStart: p, end: p + size });
    i = p + size;
  }
  if (!obus.length) throw new WebMError("AV1 temporal unit is empty");
  return obus;
}

class BitReader {
  constructor(bytes) { this.b = bytes; this.pos = 0; }
  bits(n) {
    let v = 0;
    for (let k = 0; k < n; k++) {
      if ((this.pos >> 3) >= this.b.length) throw new WebMError(`AV1 sequence header of ${this.b.length} bytes ends early (bit ${this.pos})`);
      v = v * 2 + ((this.b[this.pos >> 3] >> (7 - (this.pos & 7))) & 1);
      this.pos++;
    }
    return v;
  }
  uvlc() {
    let zeros = 0;
    while (this.bits(1) === 0) { if (++zeros >= 32) return; }
    this.bits(zeros);
  }
}

/** Sequence header OBU fields a container needs (AV1 spec §5.5), its av1C and codec string. */
export function parseSequenceHeader(obuHeader, extensionByte, payload) {
  const r = new BitReader(payload);
  const s = { profile: r.bits(3) };
  r.bits(1); // still_picture
  s.reducedStillPicture = r.bits(1) === 1;
  if (s.reducedStillPicture) {
    s.levelIndex0 = r.bits(5);
    s.tier0 = 0;
  } else {
    let decoderModelInfo = false, bufferDelayLength = 0;
    if (r.bits(1)) { // timing_info_present_flag
      r.bits(32); r.bits(32);
      if (r.bits(1)) r.uvlc();
      decoderModelInfo = r.bits(1) === 1;
      if (decoderModelInfo) { bufferDelayLength = r.bits(5) + 1; r.bits(32); r.bits(5); r.bits(5); }
    }
    const initialDisplayDelay = r.bits(1) === 1;
    const ops = r.bits(5) + 1;
    for (let i = 0; i < ops; i++) {
      r.bits(12);
      const level = r.bits(5);
      const tier = level > 7 ? r.bits(1) : 0;
      if (i === 0) { s.levelIndex0 = level; s.tier0 = tier; }
      if (decoderModelInfo && r.bits(1)) { r.bits(bufferDelayLength); r.bits(bufferDelayLength); r.bits(1); }
      if (initialDisplayDelay && r.bits(1)) r.bits(4);
    }
  }
  const wb = r.bits(4) + 1, hb = r.bits(4) + 1;
  s.maxWidth = r.bits(wb) + 1;
  s.maxHeight = r.bits(hb) + 1;
  if (!s.reducedStillPicture && r.bits(1)) { r.bits(4); r.bits(3); }
  r.bits(3);
  if (!s.reducedStillPicture) {
    r.bits(4);
    const orderHint = r.bits(1) === 1;
    if (orderHint) r.bits(2);
    const forceScreenContent = r.bits(1) === 1 ? 2 : r.bits(1);
    if (forceScreenContent > 0 && r.bits(1) === 0) r.bits(1);
    if (orderHint) r.bits(3);
  }
  r.bits(3);
  s.highBitDepth = r.bits(1) === 1;
  s.twelveBit = s.profile === 2 && s.highBitDepth ? r.bits(1) === 1 : false;
  s.bitDepth = s.twelveBit ? 12 : s.highBitDepth ? 10 : 8;
  s.monochrome = s.profile === 1 ? false : r.bits(1) === 1;
  s.colorPrimaries = s.transferCharacteristics = s.matrixCoefficients = null;
  if (r.bits(1)) { s.colorPrimaries = r.bits(8); s.transferCharacteristics = r.bits(8); s.matrixCoefficients = r.bits(8); }
  s.chromaSamplePosition = 0;
  if (s.monochrome) {
    s.fullRange = r.bits(1) === 1; s.subsamplingX = s.subsamplingY = true;
  } else if (s.colorPrimaries === 1 && s.transferCharacteristics === 13 && s.matrixCoefficients === 0) {
    s.fullRange = true; s.subsamplingX = s.subsamplingY = false;
  } else {
    s.fullRange = r.bits(1) === 1;
    if (s.profile === 0) { s.subsamplingX = s.subsamplingY = true; }
    else if (s.profile === 1) { s.subsamplingX = s.subsamplingY = false; }
    else if (s.bitDepth === 12) { s.subsamplingX = r.bits(1) === 1; s.subsamplingY = s.subsamplingX ? r.bits(1) === 1 : false; }
    else { s.subsamplingX = true; s.subsamplingY = false; }
    if (s.subsamplingX && s.subsamplingY) s.chromaSamplePosition = r.bits(2);
  }
  s.payload = payload.slice();
  s.obu = Uint8Array.from([obuHeader | 0x02, ...(extensionByte === null ? [] : [extensionByte]), ...leb128Bytes(payload.length), ...payload]);
  const b2 = (s.tier0 & 1) << 7 | (s.highBitDepth ? 0x40 : 0) | (s.twelveBit ? 0x20 : 0) | (s.monochrome ? 0x10 : 0) |
    (s.subsamplingX ? 0x08 : 0) | (s.subsamplingY ? 0x04 : 0) | (s.chromaSamplePosition & 3);
  s.av1C = Uint8Array.from([0x81, (s.profile & 7) << 5 | (s.levelIndex0 & 0x1f), b2, 0, ...s.obu]);
  const two = (n) => String(n).padStart(2, "0");
  s.codecString = `av01.${s.profile}.${two(s.levelIndex0)}${s.tier0 ? "H" : "M"}.${two(s.bitDepth)}`;
  return s;
}

/** A temporal unit's sequence header (or null), keyframe-ness and Matroska block bytes. */
export function temporalUnit(b) {
  const obus = splitOBUs(b);
  const sh = obus.find((o) => o.type === OBU.sequenceHeader);
  const header = sh ? parseSequenceHeader(b[sh.start], b[sh.start] & 0x04 ? b[sh.start + 1] : null, b.subarray(sh.payloadStart, sh.end)) : null;
  const f = obus.find((o) => o.type === OBU.frame || o.type === OBU.frameHeader);
  let keyFrame = false;
  if (f) keyFrame = header?.reducedStillPicture ? true : f.end > f.payloadStart && !(b[f.payloadStart] & 0x80) && ((b[f.payloadStart] >> 5) & 3) === 0;
  const kept = [];
  let size = 0;
  for (const o of obus) {
    if (o.type === OBU.temporalDelimiter || o.type === OBU.padding) continue;
    if (o.type === OBU.tileList) throw new WebMError("AV1 temporal unit holds a Tile List OBU, which Matroska does not allow");
    kept.push(b.subarray(o.start, o.end));
    size += o.end - o.start;
  }
  if (!size) throw new WebMError("AV1 temporal unit holds no frame, only delimiters or padding");
  const block = new Uint8Array(size);
  let at = 0;
  for (const k of kept) { block.set(k, at); at += k.length; }
  return { header, keyFrame, block };
}

// ---- EBML (RFC 8794) ----

const ID = {
  ebml: 0x1a45dfa3, ebmlVersion: 0x4286, ebmlReadVersion: 0x42f7, ebmlMaxIDLength: 0x42f2, ebmlMaxSizeLength: 0x42f3,
  docType: 0x4282, docTypeVersion: 0x4287, docTypeReadVersion: 0x4285, segment: 0x18538067, seekHead: 0x114d9b74,
  seek: 0x4dbb, seekID: 0x53ab, seekPosition: 0x53ac, info: 0x1549a966, timestampScale: 0x2ad7b1, duration: 0x4489,
  dateUTC: 0x4461, muxingApp: 0x4d80, writingApp: 0x5741, tracks: 0x1654ae6b, trackEntry: 0xae, trackNumber: 0xd7,
  trackUID: 0x73c5, trackType: 0x83, flagLacing: 0x9c, codecID: 0x86, codecPrivate: 0x63a2, video: 0xe0,
  pixelWidth: 0xb0, pixelHeight: 0xba, colour: 0x55b0, matrixCoefficients: 0x55b1, bitsPerChannel: 0x55b2,
  chromaSitingHorz: 0x55b7, chromaSitingVert: 0x55b8, range: 0x55b9, transferCharacteristics: 0x55ba, primaries: 0x55bb,
  cluster: 0x1f43b675, timestamp: 0xe7, simpleBlock: 0xa3, cues: 0x1c53bb6b, cuePoint: 0xbb, cueTime: 0xb3,
  cueTrackPositions: 0xb7, cueTrack: 0xf7, cueClusterPosition: 0xf1,
};

function idBytes(id) {
  const n = id > 0xffffff ? 4 : id > 0xffff ? 3 : id > 0xff ? 2 : 1;
  const out = [];
  for (let k = n - 1; k >= 0; k--) out.push(Math.floor(id / 2 ** (8 * k)) & 0xff);
  return out;
}

/** VINT (RFC 8794 §4) of `value` in `length` bytes or the fewest (all-ones is reserved). */
function vint(value, length) {
  let n = length ?? 1;
  if (length === undefined) while (n < 8 && value >= 2 ** (7 * n) - 1) n++;
  const out = [];
  for (let k = n - 1; k >= 0; k--) out.push(Math.floor(value / 2 ** (8 * k)) & 0xff);
  out[0] |= 0x80 >> (n - 1);
  return out;
}

function cat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const el = (id, body) => cat(idBytes(id), vint(body.length), body);
const str = (id, s) => el(id, new TextEncoder().encode(s));
function uint(id, value) {
  let n = 1;
  while (n < 8 && value >= 2 ** (8 * n)) n++;
  const b = [];
  for (let k = n - 1; k >= 0; k--) b.push(Math.floor(value / 2 ** (8 * k)) & 0xff);
  return el(id, b);
}
function fixed8(id, bigValue) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, bigValue));
  return el(id, b);
}
function float8(id, v) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setFloat64(0, v);
  return el(id, b);
}

/** Growable byte buffer. */
class Bytes {
  constructor() { this.buf = new Uint8Array(1 << 16); this.length = 0; }
  push(bytes) {
    if (this.length + bytes.length > this.buf.length) {
      let cap = this.buf.length * 2;
      while (cap < this.length + bytes.length) cap *= 2;
      const nb = new Uint8Array(cap);
      nb.set(this.buf.subarray(0, this.length));
      this.buf = nb;
    }
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }
  set(bytes, at) { this.buf.set(bytes, at); }
  bytes() { return this.buf.slice(0, this.length); }
}

export const MAX_BLOCK_OFFSET_MS = 32767;

/** One AV1 track as a WebM file, built in memory. Not reusable after finish(). */
export class WebMWriter {
  constructor({ trackUID = 1, writingApp = "custos dashboard" } = {}) {
    this.trackUID = Math.max(1, trackUID);
    this.writingApp = writingApp;
    this.out = new Bytes();
    this.sequence = null;
    this.clusterStart = null;
    this.clusterTime = 0;
    this.cues = [];
    this.first = null;
    this.last = null;
    this.previous = null;
    this.packetCount = 0;
    this.finished = false;
  }

  /**
   * Appends one AV1 temporal unit shown at `timeMs` (later than the previous).
   * @throws {WebMError} first packet not a keyframe, time not increasing, another sequence
   *   header, a keyframe flag the bytes do not bear out, bytes that are not a temporal unit
   */
  append(packet, timeMs, keyframe) {
    if (this.finished) throw new WebMError("WebM file already finished");
    const tu = temporalUnit(packet);
    if (keyframe && !(tu.header && tu.keyFrame)) {
      throw new WebMError(`packet at ${timeMs} ms is flagged as a keyframe, but it does not hold a sequence header and a KEY_FRAME`);
    }
    if (tu.header && this.sequence && !sameBytes(tu.header.payload, this.sequence.payload)) {
      throw new WebMError(`packet at ${timeMs} ms has another AV1 sequence header than the file's first keyframe (start a new file)`);
    }
    if (this.last !== null) {
      if (!(timeMs > this.last)) throw new WebMError(`packet at ${timeMs} ms is not after the previous one (${this.last} ms)`);
    } else {
      if (!keyframe || !tu.header) throw new WebMError(`a WebM file must start with a keyframe (packet at ${timeMs} ms is not one)`);
      this.sequence = tu.header;
      this.first = timeMs;
      this.#writeStart();
    }
    const rel = timeMs - this.first;
    if (keyframe || this.clusterStart === null || rel - this.clusterTime > MAX_BLOCK_OFFSET_MS) {
      this.#closeCluster();
      this.clusterStart = this.out.length;
      this.clusterTime = rel;
      this.out.push(cat(idBytes(ID.cluster), vint(0, 8)));
      this.out.push(uint(ID.timestamp, rel));
      if (keyframe) this.cues.push([rel, this.clusterStart - this.segmentStart]);
    }
    const offset = rel - this.clusterTime;
    const head = [0x81, (offset >> 8) & 0xff, offset & 0xff, keyframe ? 0x80 : 0];
    this.out.push(cat(idBytes(ID.simpleBlock), vint(head.length + tu.block.length), head));
    this.out.push(tu.block);
    this.previous = this.last;
    this.last = timeMs;
    this.packetCount++;
  }

  /** Duration the file declares: last − first + the last frame's (given, else the gap before it, else 1 s). */
  durationMs(lastFrameDurationMs) {
    if (this.first === null) return 0;
    const lastDuration = lastFrameDurationMs > 0 ? lastFrameDurationMs : this.previous !== null ? this.last - this.previous : 1000;
    return this.last - this.first + lastDuration;
  }

  /** Closes the file. @returns {Uint8Array} the whole WebM file */
  finish(lastFrameDurationMs) {
    if (this.finished) throw new WebMError("WebM file already finished");
    if (!this.packetCount) throw new WebMError("a WebM file needs at least one packet");
    this.finished = true;
    this.#closeCluster();
    const cuesPosition = this.out.length - this.segmentStart;
    const points = this.cues.map(([t, pos]) => el(ID.cuePoint, cat(uint(ID.cueTime, t),
      el(ID.cueTrackPositions, cat(uint(ID.cueTrack, 1), uint(ID.cueClusterPosition, pos))))));
    this.out.push(el(ID.cues, cat(...points)));
    const head = this.#head(this.durationMs(lastFrameDurationMs), cuesPosition);
    if (head.length !== this.headLength) throw new WebMError(`WebM head changed size (${this.headLength} → ${head.length})`);
    this.out.set(head, this.headAt);
    this.out.set(vint(this.out.length - this.segmentStart, 8), this.segmentSizeAt);
    return this.out.bytes();
  }

  #writeStart() {
    this.out.push(el(ID.ebml, cat(uint(ID.ebmlVersion, 1), uint(ID.ebmlReadVersion, 1), uint(ID.ebmlMaxIDLength, 4),
      uint(ID.ebmlMaxSizeLength, 8), str(ID.docType, "webm"), uint(ID.docTypeVersion, 4), uint(ID.docTypeReadVersion, 2))));
    this.out.push(idBytes(ID.segment));
    this.segmentSizeAt = this.out.length;
    this.out.push(vint(0, 8));
    this.segmentStart = this.out.length;
    const head = this.#head(0, 0);
    this.headAt = this.out.length;
    this.headLength = head.length;
    this.out.push(head);
  }

  #head(durationMs, cuesPosition) {
    const s = this.sequence;
    // DateUTC: ns since 2001-01-01T00:00:00 UTC (RFC 8794 §7.6).
    const dateNs = (BigInt(this.first) - 978307200000n) * 1000000n;
    const info = el(ID.info, cat(uint(ID.timestampScale, 1000000), float8(ID.duration, durationMs), fixed8(ID.dateUTC, dateNs),
      str(ID.muxingApp, "custos webm.js"), str(ID.writingApp, this.writingApp)));
    let colour = cat(uint(ID.range, s.fullRange ? 2 : 1), uint(ID.bitsPerChannel, s.bitDepth));
    if (s.matrixCoefficients !== null) {
      colour = cat(colour, uint(ID.matrixCoefficients, s.matrixCoefficients), uint(ID.transferCharacteristics, s.transferCharacteristics),
        uint(ID.primaries, s.colorPrimaries));
    }
    const siting = { 0: [0, 0], 1: [1, 2], 2: [1, 1] }[s.chromaSamplePosition];
    if (siting) colour = cat(colour, uint(ID.chromaSitingHorz, siting[0]), uint(ID.chromaSitingVert, siting[1]));
    const video = cat(uint(ID.pixelWidth, s.maxWidth), uint(ID.pixelHeight, s.maxHeight), el(ID.colour, colour));
    const entry = cat(uint(ID.trackNumber, 1), uint(ID.trackUID, this.trackUID), uint(ID.trackType, 1), uint(ID.flagLacing, 0),
      str(ID.codecID, "V_AV1"), el(ID.codecPrivate, s.av1C), el(ID.video, video));
    const tracks = el(ID.tracks, el(ID.trackEntry, entry));
    const seek = (id, pos) => el(ID.seek, cat(el(ID.seekID, idBytes(id)), fixed8(ID.seekPosition, BigInt(pos))));
    const seekHeadSize = el(ID.seekHead, cat(seek(ID.info, 0), seek(ID.tracks, 0), seek(ID.cues, 0))).length;
    const seekHead = el(ID.seekHead, cat(seek(ID.info, seekHeadSize), seek(ID.tracks, seekHeadSize + info.length), seek(ID.cues, cuesPosition)));
    return cat(seekHead, info, tracks);
  }

  #closeCluster() {
    if (this.clusterStart === null) return;
    const sizeAt = this.clusterStart + 4;
    this.out.set(vint(this.out.length - sizeAt - 8, 8), sizeAt);
    this.clusterStart = null;
  }
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Splits video packets (payload.js {meta, packet}) into runs that each make one WebM file, as
 * `custos export` does (docs/VIDEO.md): per stream in packetIndex order, a run starts at a
 * keyframe and goes on while packetIndex grows by one with the same size and codec.
 * @returns {{runs: {streamID, monitor, packets}[], skipped: number}} skipped: packets with no
 *   keyframe before them in their run (after a gap) or duplicates
 */
export function videoRuns(packets) {
  const byStream = new Map();
  for (const p of packets) {
    const k = p.meta.streamID;
    if (!byStream.has(k)) byStream.set(k, []);
    byStream.get(k).push(p);
  }
  const runs = [];
  let skipped = 0;
  for (const list of byStream.values()) {
    list.sort((a, b) => a.meta.packetIndex - b.meta.packetIndex);
    let run = null;
    for (const p of list) {
      const prev = run && run.packets[run.packets.length - 1];
      if (prev && p.meta.packetIndex === prev.meta.packetIndex) { skipped++; continue; }
      const continues = prev && p.meta.packetIndex === prev.meta.packetIndex + 1 && p.meta.width === prev.meta.width &&
        p.meta.height === prev.meta.height && p.meta.codec === prev.meta.codec;
      if (continues) run.packets.push(p);
      else if (p.meta.keyframe) { run = { streamID: p.meta.streamID, monitor: p.meta.monitor, packets: [p] }; runs.push(run); }
      else { skipped++; run = null; }
    }
  }
  runs.sort((a, b) => a.packets[0].meta.captureTimeMs - b.packets[0].meta.captureTimeMs);
  return { runs, skipped };
}

/** One run (videoRuns) as a WebM file. */
export function webmForRun(run) {
  const w = new WebMWriter({ trackUID: parseInt(run.streamID.slice(0, 12), 16) || 1 });
  for (const p of run.packets) w.append(p.packet, p.meta.captureTimeMs, p.meta.keyframe);
  return w.finish();
}
