// Custos sealed data format, version 1 (docs/FORMAT.md): splitting a record stream and reading
// the fields of DEK records and sealed-blob headers. Pure byte parsing, no crypto.
// All integers big-endian; times are ms since the Unix epoch (i64, exact in a JS number up to 2^53).

import { needsEscape } from "./ui.js";

/** Thrown for bytes that are not format version 1. `code` is one of docs/FORMAT.md's codes:
 *  "malformed", "truncated", "unsupportedVersion". The message names the field and offset. */
export class FormatError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "FormatError";
    this.code = code;
  }
}

export const MAGIC = [0x43, 0x53, 0x54, 0x53]; // "CSTS"
export const RECORD_DEK = 1;
export const RECORD_BLOB = 2;
/** Sealed session blob (docs/FORMAT.md "Sealed session blob"): a sealed blob whose
 *  authenticated header also names the graphical session's user and display. */
export const RECORD_SESSION_BLOB = 3;
export const PREFIX_LENGTH = 10;
/** Smallest DEK record: n = 1, w = 0 is refused by the wrapped-length check, so 102 + 1 + 1.
 *  Smallest session blob: n = m = d = 1, so 111 + 3. */
const MIN_LENGTH = { 1: 102 + 1 + 1, 2: 109 + 1, 3: 111 + 3 };
/** Capture kinds by header byte (offset 75 of a sealed blob). */
export const KINDS = { 1: "screen", 2: "keystrokes", 3: "generic", 4: "activity" };

/** Whether a record type is a sealed blob (type 2) or a sealed session blob (type 3). */
export function isBlobRecord(type) { return type === RECORD_BLOB || type === RECORD_SESSION_BLOB; }


/** CustosBase.UserName's rule (the one validator; docs/FORMAT.md "Sealed session blob"):
 *  1–128 UTF-8 bytes, no "/", no character SafeText escapes, not "." or "..". */
export function isValidUserName(text) {
  if (typeof text !== "string" || text === "." || text === "..") return false;
  const n = new TextEncoder().encode(text).length;
  if (n < 1 || n > 128) return false;
  for (const c of text) if (c === "/" || needsEscape(c.codePointAt(0))) return false;
  return true;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

export function hex(bytes) {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

function u32(b, at) { return ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3]; }

/** u64 at `at` as a JS number; throws when it exceeds 2^53 (no real value does). */
function u64(b, at, field) {
  const hi = u32(b, at), lo = u32(b, at + 4);
  if (hi >= 0x200000) throw new FormatError("malformed", `${field} at byte ${at} is larger than 2^53`);
  return hi * 0x100000000 + lo;
}

/** i64 (two's complement) at `at` as a JS number (times: ms since 1970). */
function i64(b, at, field) {
  const hi = u32(b, at), lo = u32(b, at + 4);
  if (hi & 0x80000000) {
    const v = -((~hi >>> 0) * 0x100000000 + ((~lo >>> 0) + 1));
    if (v < -(2 ** 53)) throw new FormatError("malformed", `${field} at byte ${at} is below -2^53`);
    return v;
  }
  if (hi >= 0x200000) throw new FormatError("malformed", `${field} at byte ${at} is larger than 2^53`);
  return hi * 0x100000000 + lo;
}

function readAgentID(b, at, n, what) {
  if (n < 1) throw new FormatError("malformed", `${what}: agent id length at byte ${at - 1} is 0 (expected 1…255)`);
  try {
    return utf8.decode(b.subarray(at, at + n));
  } catch {
    throw new FormatError("malformed", `${what}: agent id at byte ${at} is not UTF-8`);
  }
}

/** Checks the common prefix of the record at `b[0...]` and returns {type, length}. */
function readPrefix(b, what) {
  if (b.length < PREFIX_LENGTH) {
    throw new FormatError("truncated", `${what}: ${b.length} bytes, shorter than the 10-byte record prefix`);
  }
  for (let i = 0; i < 4; i++) {
    if (b[i] !== MAGIC[i]) throw new FormatError("malformed", `${what}: bytes 0–3 are not the magic CSTS`);
  }
  if (b[4] !== 1) throw new FormatError("unsupportedVersion", `${what}: format version ${b[4]} at byte 4 (expected 1)`);
  const type = b[5];
  if (type !== RECORD_DEK && !isBlobRecord(type)) {
    throw new FormatError("malformed", `${what}: record type ${type} at byte 5 (expected 1 DEK record, 2 sealed blob or 3 sealed session blob)`);
  }
  const length = u32(b, 6);
  if (length < MIN_LENGTH[type]) {
    throw new FormatError("malformed", `${what}: record length ${length} at byte 6 is below the minimum ${MIN_LENGTH[type]} for type ${type}`);
  }
  return { type, length };
}

/**
 * Splits a record stream (records back to back, docs/FORMAT.md "Record stream") into records.
 * @param {Uint8Array} bytes
 * @returns {{type: 1|2|3, bytes: Uint8Array, offset: number}[]} views into `bytes` (no copies)
 * @throws {FormatError} naming the record index and byte offset
 */
export function splitRecords(bytes) {
  const records = [];
  let at = 0;
  while (at < bytes.length) {
    const what = `record ${records.length} at byte ${at}`;
    const { type, length } = readPrefix(bytes.subarray(at), what);
    if (at + length > bytes.length) {
      throw new FormatError("truncated", `${what}: declares ${length} bytes, only ${bytes.length - at} are left`);
    }
    records.push({ type, bytes: bytes.subarray(at, at + length), offset: at });
    at += length;
  }
  return records;
}

/** Status entries of admin answers (docs/API.md "Opened items"): magic CPLN, version 1. */
const STATUS_MAGIC = [0x43, 0x50, 0x4c, 0x4e];
const STATUS_LENGTH = 26;
/** Status codes of a CPLN entry without payload, as the collector's `PlainFrame.Status`. */
export const ITEM_STATUS = Object.freeze({ notFound: 1, endToEnd: 2, damaged: 3, unreadable: 4 });

/**
 * Splits a `POST /api/v1/sealed` answer: records back to back (docs/FORMAT.md), and in place of
 * a blob the collector could not send, a 26-byte CPLN status entry naming it (docs/API.md
 * "Admin API": `01` gone since the listing, `04` its stored bytes cannot be read).
 * @param {Uint8Array} bytes
 * @returns {{records: {type: 1|2|3, bytes: Uint8Array, offset: number}[], statuses: {id: string, status: number, offset: number}[]}}
 * @throws {FormatError} naming the entry index and byte offset
 */
export function splitSealedAnswer(bytes) {
  const records = [], statuses = [];
  let at = 0;
  while (at < bytes.length) {
    const what = `entry ${records.length + statuses.length} at byte ${at}`;
    const b = bytes.subarray(at);
    if (b.length >= 4 && STATUS_MAGIC.every((m, i) => b[i] === m)) {
      if (b.length < STATUS_LENGTH) throw new FormatError("truncated", `${what}: a status entry is 26 bytes, only ${b.length} are left`);
      if (b[4] !== 1) throw new FormatError("unsupportedVersion", `${what}: status entry version ${b[4]} at byte 4 (expected 1)`);
      const status = b[5], length = u32(b, 6);
      if (length !== STATUS_LENGTH || (status !== ITEM_STATUS.notFound && status !== ITEM_STATUS.unreadable)) {
        throw new FormatError("malformed", `${what}: status ${status}, length ${length} (expected status 1 or 4, length 26)`);
      }
      statuses.push({ id: hex(b.subarray(10, 26)), status, offset: at });
      at += STATUS_LENGTH;
      continue;
    }
    const { type, length } = readPrefix(b, what);
    if (at + length > bytes.length) {
      throw new FormatError("truncated", `${what}: declares ${length} bytes, only ${bytes.length - at} are left`);
    }
    records.push({ type, bytes: bytes.subarray(at, at + length), offset: at });
    at += length;
  }
  return { records, statuses };
}

/**
 * Reads a DEK record (type 1).
 * @returns {{dekID: string, kekID: string, createdMs: number, agentID: string,
 *   wrappedDEK: Uint8Array, commitment: Uint8Array, committed: Uint8Array, bytes: Uint8Array}}
 *   ids as lowercase hex; `committed` = record[0 ..< 68+n] (the commitment's HKDF info tail).
 * @throws {FormatError}
 */
export function parseDEKRecord(bytes, what = "DEK record") {
  const { type, length } = readPrefix(bytes, what);
  if (type !== RECORD_DEK) throw new FormatError("malformed", `${what}: record type ${type} (expected 1, DEK record)`);
  if (length !== bytes.length) {
    throw new FormatError(length > bytes.length ? "truncated" : "malformed",
      `${what}: declares ${length} bytes, has ${bytes.length}`);
  }
  if (bytes[10] !== 1) throw new FormatError("unsupportedVersion", `${what}: algorithm suite ${bytes[10]} at byte 10 (expected 1)`);
  const n = bytes[67];
  if (70 + n > length) throw new FormatError("malformed", `${what}: agent id length ${n} runs past the record`);
  const agentID = readAgentID(bytes, 68, n, what);
  const w = (bytes[68 + n] << 8) | bytes[69 + n];
  if (w === 0) throw new FormatError("malformed", `${what}: wrapped DEK length at byte ${68 + n} is 0`);
  if (102 + n + w !== length) {
    throw new FormatError("malformed", `${what}: length ${length} disagrees with agent id length ${n} and wrapped DEK length ${w} (expected ${102 + n + w})`);
  }
  return {
    dekID: hex(bytes.subarray(11, 27)),
    kekID: hex(bytes.subarray(27, 59)),
    createdMs: i64(bytes, 59, "creation time"),
    agentID,
    wrappedDEK: bytes.subarray(70 + n, 70 + n + w),
    commitment: bytes.subarray(70 + n + w, 102 + n + w),
    committed: bytes.subarray(0, 68 + n),
    bytes,
  };
}

/** A session field (user or display): length byte at `at`, 1…255, then UTF-8. */
function readSessionText(b, at, length, field, what) {
  const m = b[at];
  if (at + 1 > length - 16) throw new FormatError("malformed", `${what}: ${field} length at byte ${at} runs past the record (length ${length})`);
  if (m < 1) throw new FormatError("malformed", `${what}: ${field} length at byte ${at} is 0 (expected 1…255)`);
  if (at + 1 + m > length - 16) throw new FormatError("malformed", `${what}: ${field} length ${m} at byte ${at} runs past the record (length ${length})`);
  try {
    return { text: utf8.decode(b.subarray(at + 1, at + 1 + m)), end: at + 1 + m };
  } catch {
    throw new FormatError("malformed", `${what}: ${field} at byte ${at + 1} is not UTF-8`);
  }
}

/**
 * Reads a sealed blob's header: type 2, or type 3 (sealed session blob, docs/FORMAT.md), whose
 * header also holds the session's user (UserName's rule, else `malformed`) and display.
 * @returns {{blobID: string, kekID: string, dekID: string, kind: "screen"|"keystrokes"|"generic"|"activity",
 *   sequence: number, timeMs: number, agentID: string, user: string|null, display: string|null,
 *   headerLength: number, plaintextLength: number, blobIDBytes: Uint8Array}}
 *   `headerLength` = 93 + n (type 2) or 95 + n + m + d (type 3): bytes [0, headerLength) are the
 *   GCM AAD; ciphertext and tag follow. `user`/`display` are null for type 2.
 * @throws {FormatError}
 */
export function parseBlobHeader(bytes, what = "sealed blob") {
  const { type, length } = readPrefix(bytes, what);
  if (!isBlobRecord(type)) throw new FormatError("malformed", `${what}: record type ${type} (expected 2 sealed blob or 3 sealed session blob)`);
  if (length !== bytes.length) {
    throw new FormatError(length > bytes.length ? "truncated" : "malformed",
      `${what}: declares ${length} bytes, has ${bytes.length}`);
  }
  if (bytes[10] !== 1) throw new FormatError("unsupportedVersion", `${what}: algorithm suite ${bytes[10]} at byte 10 (expected 1)`);
  const kind = KINDS[bytes[75]];
  if (!kind) throw new FormatError("malformed", `${what}: capture kind ${bytes[75]} at byte 75 (expected 1, 2, 3 or 4)`);
  const n = bytes[92];
  if (109 + n > length) throw new FormatError("malformed", `${what}: agent id length ${n} at byte 92 runs past the record (length ${length})`);
  const agentID = readAgentID(bytes, 93, n, what);
  let headerLength = 93 + n, user = null, display = null;
  if (type === RECORD_SESSION_BLOB) {
    const u = readSessionText(bytes, 93 + n, length, "user name", what);
    if (!isValidUserName(u.text)) {
      throw new FormatError("malformed", `${what}: user name at byte ${94 + n} is not a valid user name (1–128 UTF-8 bytes, no '/', control or bidirectional characters, not '.' or '..')`);
    }
    const d = readSessionText(bytes, u.end, length, "display", what);
    user = u.text;
    display = d.text;
    headerLength = d.end;
  }
  return {
    blobID: hex(bytes.subarray(11, 27)),
    blobIDBytes: bytes.subarray(11, 27),
    kekID: hex(bytes.subarray(27, 59)),
    dekID: hex(bytes.subarray(59, 75)),
    kind,
    sequence: u64(bytes, 76, "sequence number"),
    timeMs: i64(bytes, 84, "capture time"),
    agentID,
    user,
    display,
    headerLength,
    plaintextLength: length - headerLength - 16,
  };
}

/**
 * The fields in which an opened blob's authenticated header disagrees with the listing row the
 * collector gave for it (the header is the truth; `custos decrypt` makes the same check against
 * the database row). A row without a session (`user` null) matches a type 2 header only.
 * @param {object} header parseBlobHeader's result (of a blob that authenticated)
 * @param {{id, agent, kind, timeMs, user?, display?}} row a `GET /api/v1/captures` item
 * @returns {string[]} names of the fields that differ: "id", "agent", "kind", "time", "user", "display"
 */
export function headerMismatch(header, row) {
  const out = [];
  if (header.blobID !== row.id) out.push("id");
  if (header.agentID !== row.agent) out.push("agent");
  if (header.kind !== row.kind) out.push("kind");
  if (header.timeMs !== row.timeMs) out.push("time");
  if (header.user !== (row.user ?? null)) out.push("user");
  if (header.display !== (row.display ?? null)) out.push("display");
  return out;
}
