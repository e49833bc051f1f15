// Opening sealed records (docs/FORMAT.md, suite 1) with WebCrypto only:
// RSA-OAEP-SHA256 unwrap of the DEK (RFC 8017 §7.1) into a non-extractable HKDF key, the key
// commitment check (HKDF-SHA256, RFC 5869), the per-blob key and nonce (HKDF-SHA256, 44 bytes)
// and AES-256-GCM (NIST SP 800-38D) with the whole blob header as AAD.

import { FormatError, hex, isBlobRecord, parseBlobHeader, parseDEKRecord } from "./format.js";

/** An item that does not open. `code` is docs/FORMAT.md's: "keyMismatch", "dekMismatch",
 *  "unwrapFailed", "commitmentMismatch", "authenticationFailed" (FormatError covers the rest).
 *  Messages name the DEK or blob id and never hold key bytes or plaintext. */
export class EnvelopeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "EnvelopeError";
    this.code = code;
  }
}

const enc = new TextEncoder();
const COMMITMENT_INFO = enc.encode("CSTS v1 DEK commitment");
const BLOB_INFO = enc.encode("CSTS v1 blob key+nonce");

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Equal lengths and bytes, without an early exit. */
function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * The DEKs one private key opened, by DEK id. Keys are CryptoKeys (non-extractable); only the
 * per-blob key+nonce passes through page memory for the moment of one import (then zeroed).
 */
export class KeyRing {
  /**
   * @param {CryptoKey} privateKey RSA-OAEP SHA-256 with usage unwrapKey (keys.js)
   * @param {string} [kekID] hex SHA-256 of its SPKI: records for another KEK fail fast as keyMismatch
   */
  constructor(privateKey, kekID) {
    this.privateKey = privateKey;
    this.kekID = kekID ?? null;
    this.deks = new Map(); // dekID hex → {key: CryptoKey (HKDF), record}
  }

  /** DEK ids opened so far. */
  get size() { return this.deks.size; }

  has(dekID) { return this.deks.has(dekID); }

  /**
   * Unwraps a DEK record and checks its key commitment.
   * @param {Uint8Array} bytes one whole DEK record
   * @returns {Promise<object>} the parsed record (format.js parseDEKRecord)
   * @throws {FormatError|EnvelopeError} keyMismatch, unwrapFailed, commitmentMismatch
   */
  async addDEKRecord(bytes) {
    if (!this.privateKey) throw new EnvelopeError("keyMismatch", "the key ring was locked (forgotten)");
    const record = parseDEKRecord(bytes);
    if (this.deks.has(record.dekID)) return this.deks.get(record.dekID).record;
    if (this.kekID && record.kekID !== this.kekID) {
      throw new EnvelopeError("keyMismatch", `DEK ${record.dekID} is wrapped to KEK ${record.kekID}, not to this key (${this.kekID})`);
    }
    let key;
    try {
      key = await crypto.subtle.unwrapKey("raw", record.wrappedDEK, this.privateKey, { name: "RSA-OAEP" },
        { name: "HKDF" }, false, ["deriveBits"]);
    } catch {
      throw new EnvelopeError("unwrapFailed", `DEK ${record.dekID}: RSA-OAEP unwrap failed (the wrapped DEK is damaged or made for another key)`);
    }
    const expected = new Uint8Array(await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: bytes.subarray(11, 27), info: concat(COMMITMENT_INFO, record.committed) }, key, 256));
    if (!sameBytes(expected, record.commitment)) {
      throw new EnvelopeError("commitmentMismatch", `DEK ${record.dekID}: the key commitment does not match (the record was changed)`);
    }
    this.deks.set(record.dekID, { key, record });
    return record;
  }

  /**
   * Opens one sealed blob whose DEK record was added.
   * @param {Uint8Array} blobBytes one whole sealed blob
   * @returns {Promise<{header: object, plaintext: Uint8Array}>} header as format.js parseBlobHeader
   * @throws {FormatError|EnvelopeError} dekMismatch, keyMismatch, authenticationFailed
   */
  async open(blobBytes) {
    const header = parseBlobHeader(blobBytes);
    const dek = this.deks.get(header.dekID);
    if (!dek) throw new EnvelopeError("dekMismatch", `blob ${header.blobID}: its DEK ${header.dekID} was not opened (no DEK record for it)`);
    if (dek.record.kekID !== header.kekID) {
      throw new EnvelopeError("keyMismatch", `blob ${header.blobID} names KEK ${header.kekID}, its DEK record ${dek.record.kekID}`);
    }
    const kn = new Uint8Array(await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: header.blobIDBytes, info: BLOB_INFO }, dek.key, 352));
    let key;
    try {
      key = await crypto.subtle.importKey("raw", kn.subarray(0, 32), "AES-GCM", false, ["decrypt"]);
    } finally {
      kn.fill(0, 0, 32);
    }
    const iv = kn.slice(32, 44);
    kn.fill(0);
    let plaintext;
    try {
      plaintext = await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: blobBytes.subarray(0, header.headerLength), tagLength: 128 },
        key, blobBytes.subarray(header.headerLength));
    } catch {
      throw new EnvelopeError("authenticationFailed", `blob ${header.blobID}: authentication failed (a header or ciphertext byte was changed)`);
    }
    return { header, plaintext: new Uint8Array(plaintext) };
  }

  /** Drops every DEK and the private key (the CryptoKeys become garbage). */
  forget() {
    this.deks.clear();
    this.privateKey = null;
    this.kekID = null;
  }
}

/**
 * Opens a whole record stream (a sealed file): DEK records first, then every blob. Items that
 * fail are reported, never partly shown.
 * @returns {Promise<{items: {header, plaintext}[], errors: {offset, error}[]}>}
 */
export async function openStream(ring, records) {
  const items = [];
  const errors = [];
  for (const r of records.filter((r) => r.type === 1)) {
    try { await ring.addDEKRecord(r.bytes); } catch (error) { errors.push({ offset: r.offset, error }); }
  }
  for (const r of records.filter((r) => isBlobRecord(r.type))) {
    try { items.push(await ring.open(r.bytes)); } catch (error) { errors.push({ offset: r.offset, error }); }
  }
  return { items, errors };
}

export { FormatError, hex };
