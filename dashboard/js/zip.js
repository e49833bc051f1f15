// A store-only ZIP writer (PKWARE APPNOTE.TXT 6.3.x: local file headers, central directory, end of
// central directory; method 0 "stored", CRC-32, UTF-8 names with general purpose bit 11).
// No compression: the contents are PNG, WebM and small text. No ZIP64: each file and the whole
// archive must stay below 4 GiB, and at most 65,535 files.

export class ZipError extends Error {
  constructor(message) { super(message); this.name = "ZipError"; }
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO 3309, the polynomial ZIP uses). */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** MS-DOS date and time fields (of the UTC time; 2-second resolution, from 1980). */
function dosTime(ms) {
  const d = new Date(Math.max(ms, Date.UTC(1980, 0, 1)));
  return {
    time: (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1),
    date: ((d.getUTCFullYear() - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate(),
  };
}

export class ZipWriter {
  constructor() {
    this.parts = [];
    this.central = [];
    this.offset = 0;
    this.names = new Set();
  }

  /**
   * Adds one file. `name`: a relative path with "/" separators (no "..", no leading "/").
   * @param {string} name
   * @param {Uint8Array|string} data
   * @param {number} [timeMs] modification time (ms since the epoch, written as UTC)
   */
  add(name, data, timeMs = Date.now()) {
    if (typeof data === "string") data = new TextEncoder().encode(data);
    if (!name || name.startsWith("/") || name.split("/").some((s) => s === ".." || s === "")) throw new ZipError(`bad file name in the zip: ${JSON.stringify(name)}`);
    if (this.names.has(name)) throw new ZipError(`two files named ${JSON.stringify(name)} in the zip`);
    if (data.length >= 0xffffffff || this.offset + data.length >= 0xffffffff) throw new ZipError("the zip would reach 4 GiB (no ZIP64): export less at once");
    if (this.names.size >= 0xffff) throw new ZipError("more than 65,535 files in one zip: export less at once");
    this.names.add(name);
    const nameBytes = new TextEncoder().encode(name);
    const crc = crc32(data);
    const { time, date } = dosTime(timeMs);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true); // version needed: 2.0
    local.setUint16(6, 0x0800, true); // UTF-8 names
    local.setUint16(8, 0, true); // stored
    local.setUint16(10, time, true);
    local.setUint16(12, date, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    local.setUint16(28, 0, true);
    const cd = new DataView(new ArrayBuffer(46));
    cd.setUint32(0, 0x02014b50, true);
    cd.setUint16(4, 0x0314, true); // made by: Unix, 2.0
    cd.setUint16(6, 20, true);
    cd.setUint16(8, 0x0800, true);
    cd.setUint16(10, 0, true);
    cd.setUint16(12, time, true);
    cd.setUint16(14, date, true);
    cd.setUint32(16, crc, true);
    cd.setUint32(20, data.length, true);
    cd.setUint32(24, data.length, true);
    cd.setUint16(28, nameBytes.length, true);
    cd.setUint32(38, (0o100600 << 16) >>> 0, true); // regular file, mode 0600
    cd.setUint32(42, this.offset, true);
    this.parts.push(new Uint8Array(local.buffer), nameBytes, data);
    this.central.push(new Uint8Array(cd.buffer), nameBytes);
    this.offset += 30 + nameBytes.length + data.length;
  }

  /** @returns {Blob} the archive (application/zip) */
  finish() {
    const cdSize = this.central.reduce((s, p) => s + p.length, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, this.central.length / 2, true);
    end.setUint16(10, this.central.length / 2, true);
    end.setUint32(12, cdSize, true);
    end.setUint32(16, this.offset, true);
    return new Blob([...this.parts, ...this.central, new Uint8Array(end.buffer)], { type: "application/zip" });
  }
}
