// The reviewer's private key: PEM → (PBES2 decrypt) → non-extractable RSA-OAEP SHA-256 CryptoKey.
// WebCrypto only. Formats: RFC 7468 (PEM), RFC 5208/5958 (PKCS#8 PrivateKeyInfo and
// EncryptedPrivateKeyInfo), RFC 8018 §6.2 (PBES2) with §5.2 PBKDF2 and §B.2.5 AES-CBC-Pad,
// RFC 8017 §A.1 (RSAPrivateKey), RFC 5280 §4.1.2.7 (SubjectPublicKeyInfo: the KEK id is its SHA-256).
// Accepted: "BEGIN ENCRYPTED PRIVATE KEY" (PBES2, PBKDF2 with HMAC-SHA-1/256/384/512,
// AES-128/256-CBC: what `openssl genrsa -aes256` writes) and the unencrypted "BEGIN PRIVATE KEY".
// Everything else is refused with a message saying what the file is and how to convert it.

import { hex } from "./format.js";

/** Converting command for keys in another form (traditional "Proc-Type" PEM, DES, scrypt). */
export const CONVERT_COMMAND =
  "openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -in old.pem -out keypair.pem";

/** A key that cannot be used. `code`: "wrongPassphrase" (or a KeyFormatError's codes). */
/** The command that gives an unencrypted key file a passphrase (PKCS#8 PBES2, as keys.js reads). */
export const PROTECT_COMMAND =
  "openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -in keypair.pem -out keypair-protected.pem";

export class KeyError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "KeyError";
    this.code = code;
  }
}

/** A key file in a form this page does not read. `code`: "traditionalPEM", "notPrivateKey",
 *  "unsupportedKey", "invalidKey". */
export class KeyFormatError extends KeyError {
  constructor(code, message) {
    super(code, message);
    this.name = "KeyFormatError";
  }
}

// OIDs as the hex of their DER contents.
const OID = {
  rsaEncryption: "2a864886f70d010101",
  pbes2: "2a864886f70d01050d",
  pbkdf2: "2a864886f70d01050c",
  hmacWithSHA1: "2a864886f70d0207",
  hmacWithSHA256: "2a864886f70d0209",
  hmacWithSHA384: "2a864886f70d020a",
  hmacWithSHA512: "2a864886f70d020b",
  aes128cbc: "608648016503040102",
  aes192cbc: "608648016503040116",
  aes256cbc: "60864801650304012a",
};
const PRF = {
  [OID.hmacWithSHA1]: "SHA-1", [OID.hmacWithSHA256]: "SHA-256",
  [OID.hmacWithSHA384]: "SHA-384", [OID.hmacWithSHA512]: "SHA-512",
};
const CIPHER_BYTES = { [OID.aes128cbc]: 16, [OID.aes256cbc]: 32 };

// ---- minimal DER reader (X.690 §8, §10: definite lengths only) ----

const TAG = { INTEGER: 0x02, BIT_STRING: 0x03, OCTET_STRING: 0x04, NULL: 0x05, OID: 0x06, SEQUENCE: 0x30 };

/** One TLV at `at`: {tag, start (of contents), end, tlvStart}. Throws DERError on bad input. */
class DERError extends Error {}

function readTLV(b, at, end) {
  if (at + 2 > end) throw new DERError(`DER element at byte ${at} runs past its container`);
  const tag = b[at];
  let len = b[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const count = len & 0x7f;
    if (count === 0 || count > 4) throw new DERError(`DER length form at byte ${at + 1} not supported`);
    if (start + count > end) throw new DERError(`DER length at byte ${at + 1} runs past its container`);
    len = 0;
    for (let i = 0; i < count; i++) len = len * 256 + b[start + i];
    if (len < 0x80 || (count > 1 && b[start] === 0)) throw new DERError(`DER length at byte ${at + 1} is not minimal`);
    start += count;
  }
  if (start + len > end) throw new DERError(`DER element at byte ${at} (length ${len}) runs past its container`);
  return { tag, start, end: start + len, tlvStart: at };
}

/** The children of a constructed element (or of the whole buffer), each checked for `tags`. */
function children(b, el, tags, what) {
  const out = [];
  let at = el.start;
  while (at < el.end) {
    const c = readTLV(b, at, el.end);
    out.push(c);
    at = c.end;
  }
  if (tags) {
    if (out.length < tags.length) throw new DERError(`${what}: ${out.length} fields, expected ${tags.length}`);
    tags.forEach((t, i) => {
      if (t !== null && out[i].tag !== t) throw new DERError(`${what}: field ${i} has tag 0x${out[i].tag.toString(16)}, expected 0x${t.toString(16)}`);
    });
  }
  return out;
}

function top(b, what) {
  const el = readTLV(b, 0, b.length);
  if (el.tag !== TAG.SEQUENCE) throw new DERError(`${what}: not a DER SEQUENCE`);
  if (el.end !== b.length) throw new DERError(`${what}: ${b.length - el.end} bytes after the DER SEQUENCE`);
  return el;
}

function contents(b, el) { return b.subarray(el.start, el.end); }

function derUInt(b, el, what) {
  if (el.tag !== TAG.INTEGER) throw new DERError(`${what}: not an INTEGER`);
  const v = contents(b, el);
  if (v.length === 0 || v.length > 6 || (v[0] & 0x80)) throw new DERError(`${what}: not a small positive INTEGER`);
  let n = 0;
  for (const x of v) n = n * 256 + x;
  return n;
}

// ---- minimal DER writer (lengths and SEQUENCE/BIT STRING wrappers for the SPKI) ----

function derLength(n) {
  if (n < 0x80) return [n];
  const bytes = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return [0x80 | bytes.length, ...bytes];
}

function derWrap(tag, ...parts) {
  const len = parts.reduce((s, p) => s + p.length, 0);
  const head = [tag, ...derLength(len)];
  const out = new Uint8Array(head.length + len);
  out.set(head, 0);
  let at = head.length;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

// ---- PEM (RFC 7468, with RFC 1421 headers for the traditional form) ----

/** Every PEM block in `text`: {label, headers: {name: value}, der: Uint8Array}. */
export function parsePEM(text) {
  const blocks = [];
  const re = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const headers = {};
    const lines = m[2].split(/\r?\n/);
    let body = "";
    for (const line of lines) {
      const h = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (h && body === "") headers[h[1]] = h[2].trim();
      else body += line.trim();
    }
    let der;
    try {
      der = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
    } catch {
      throw new KeyFormatError("invalidKey", `the PEM block "${m[1]}" has a body that is not base64`);
    }
    blocks.push({ label: m[1], headers, der });
  }
  return blocks;
}

// ---- the key ----

/**
 * Unlocks a private key file's text with its passphrase.
 * @param {string} pemText the whole file (keypair.pem)
 * @param {string} passphrase not used for an unencrypted "BEGIN PRIVATE KEY" (`unlockKey` says so)
 * @returns {Promise<CryptoKey>} RSA-OAEP SHA-256, non-extractable, usages decrypt + unwrapKey
 * @throws {KeyError} wrongPassphrase; {KeyFormatError} for any other form (message says how to convert)
 */
export async function unlockPrivateKey(pemText, passphrase) {
  return (await unlockKey(pemText, passphrase)).privateKey;
}

/**
 * As `unlockPrivateKey`, with the key's KEK id (SHA-256 of the public key's SPKI DER, hex:
 * what `custos keys id publickey.crt` prints) and size. `unprotected` is true for an
 * unencrypted "BEGIN PRIVATE KEY" file: it was not protected by a passphrase (the one given
 * was not used); the page accepts it and warns (`PROTECT_COMMAND` encrypts it).
 * @returns {Promise<{privateKey: CryptoKey, kekID: string, bits: number, unprotected: boolean}>}
 */
export async function unlockKey(pemText, passphrase) {
  if (typeof pemText !== "string" || !pemText.includes("-----BEGIN ")) {
    throw new KeyFormatError("invalidKey", "the file is not a PEM key file (no \"-----BEGIN\" line); choose keypair.pem, the private key");
  }
  const blocks = parsePEM(pemText);
  const priv = blocks.find((b) => b.label.endsWith("PRIVATE KEY"));
  if (!priv) {
    const labels = blocks.map((b) => b.label).join(", ") || "none complete";
    const isPublic = blocks.some((b) => b.label.includes("PUBLIC KEY") || b.label === "CERTIFICATE");
    throw new KeyFormatError("notPrivateKey", isPublic
      ? `this file holds a public key or certificate (${labels}), not the private key: choose keypair.pem`
      : `no private key in the file (PEM blocks: ${labels})`);
  }
  if (priv.label === "RSA PRIVATE KEY" || priv.label === "EC PRIVATE KEY" || priv.label === "DSA PRIVATE KEY") {
    const encrypted = (priv.headers["Proc-Type"] || "").includes("ENCRYPTED");
    throw new KeyFormatError("traditionalPEM",
      `this key is in the traditional OpenSSL form ("BEGIN ${priv.label}"${encrypted ? `, Proc-Type ENCRYPTED, ${priv.headers["DEK-Info"]?.split(",")[0] ?? "?"}` : ", unencrypted"}), ` +
      `which the browser cannot read. Convert it once on your machine with: ${CONVERT_COMMAND}`);
  }
  let pkcs8;
  let owned = false;
  if (priv.label === "ENCRYPTED PRIVATE KEY") {
    pkcs8 = await decryptPBES2(priv.der, passphrase);
    owned = true;
  } else if (priv.label === "PRIVATE KEY") {
    pkcs8 = priv.der;
  } else {
    throw new KeyFormatError("unsupportedKey", `unknown PEM block "BEGIN ${priv.label}"`);
  }
  try {
    const { spki, bits } = rsaPublicFromPKCS8(pkcs8, owned);
    let privateKey;
    try {
      privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "RSA-OAEP", hash: "SHA-256" }, false,
        ["decrypt", "unwrapKey"]);
    } catch (e) {
      if (owned) throw wrongPassphrase();
      throw new KeyFormatError("invalidKey", `the browser refused the RSA private key (${e.name})`);
    }
    const kekID = hex(new Uint8Array(await crypto.subtle.digest("SHA-256", spki)));
    return { privateKey, kekID, bits, unprotected: !owned };
  } finally {
    if (owned) pkcs8.fill(0);
  }
}

function wrongPassphrase() {
  return new KeyError("wrongPassphrase", "wrong passphrase for this key file (or the key file is damaged); nothing was decrypted");
}

/** EncryptedPrivateKeyInfo (RFC 5958 §3) with PBES2 → the PrivateKeyInfo DER (caller zeroes it). */
async function decryptPBES2(der, passphrase) {
  let salt, iterations, keyBytes, prf, cipherKeyBytes, iv, encrypted;
  try {
    const outer = children(der, top(der, "EncryptedPrivateKeyInfo"), [TAG.SEQUENCE, TAG.OCTET_STRING], "EncryptedPrivateKeyInfo");
    const [algOID, algParams] = children(der, outer[0], [TAG.OID, TAG.SEQUENCE], "encryptionAlgorithm");
    if (hex(contents(der, algOID)) !== OID.pbes2) {
      throw new KeyFormatError("unsupportedKey", `the key is encrypted with an old PKCS#5 v1 scheme (not PBES2); convert it with: ${CONVERT_COMMAND}`);
    }
    const [kdf, enc] = children(der, algParams, [TAG.SEQUENCE, TAG.SEQUENCE], "PBES2-params");
    const [kdfOID, kdfParams] = children(der, kdf, [TAG.OID, TAG.SEQUENCE], "keyDerivationFunc");
    if (hex(contents(der, kdfOID)) !== OID.pbkdf2) {
      throw new KeyFormatError("unsupportedKey", `the key's passphrase is stretched with a function other than PBKDF2 (e.g. scrypt); convert it with: ${CONVERT_COMMAND}`);
    }
    const p = children(der, kdfParams, [TAG.OCTET_STRING, TAG.INTEGER], "PBKDF2-params");
    salt = contents(der, p[0]);
    iterations = derUInt(der, p[1], "PBKDF2 iteration count");
    prf = "SHA-1"; // RFC 8018 §A.2: the default PRF
    for (const extra of p.slice(2)) {
      if (extra.tag === TAG.INTEGER) keyBytes = derUInt(der, extra, "PBKDF2 key length");
      else if (extra.tag === TAG.SEQUENCE) {
        const [prfOID] = children(der, extra, [TAG.OID], "PBKDF2 prf");
        prf = PRF[hex(contents(der, prfOID))];
        if (!prf) throw new KeyFormatError("unsupportedKey", `the key's PBKDF2 uses an HMAC this page does not know; convert it with: ${CONVERT_COMMAND}`);
      }
    }
    const [encOID, encIV] = children(der, enc, [TAG.OID, TAG.OCTET_STRING], "encryptionScheme");
    cipherKeyBytes = CIPHER_BYTES[hex(contents(der, encOID))];
    if (!cipherKeyBytes) {
      throw new KeyFormatError("unsupportedKey", `the key is encrypted with a cipher other than AES-128/256-CBC (e.g. DES-EDE3 or AES-192); convert it with: ${CONVERT_COMMAND}`);
    }
    iv = contents(der, encIV);
    encrypted = contents(der, outer[1]);
  } catch (e) {
    if (e instanceof DERError) throw new KeyFormatError("invalidKey", `the encrypted private key is damaged: ${e.message}`);
    throw e;
  }
  if (keyBytes !== undefined && keyBytes !== cipherKeyBytes) {
    throw new KeyFormatError("invalidKey", `the key's PBKDF2 key length ${keyBytes} does not match its cipher's ${cipherKeyBytes}`);
  }
  if (iv.length !== 16) throw new KeyFormatError("invalidKey", `the key's AES-CBC IV has ${iv.length} bytes, expected 16`);
  if (iterations < 1 || iterations > 10_000_000) throw new KeyFormatError("invalidKey", `PBKDF2 iteration count ${iterations} is out of range`);
  if (typeof passphrase !== "string" || passphrase.length === 0) {
    throw new KeyError("wrongPassphrase", "the key file is encrypted: type its passphrase");
  }
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(passphrase), "PBKDF2", false, ["deriveKey"]);
  const aes = await crypto.subtle.deriveKey({ name: "PBKDF2", salt, iterations, hash: prf }, base,
    { name: "AES-CBC", length: cipherKeyBytes * 8 }, false, ["decrypt"]);
  try {
    return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-CBC", iv }, aes, encrypted));
  } catch {
    throw wrongPassphrase(); // bad padding: the derived key is wrong (RFC 8018 §6.2.2 step 4)
  }
}

/** From PrivateKeyInfo (RFC 5958 §2) holding an RSAPrivateKey (RFC 8017 §A.1.2): the
 *  SubjectPublicKeyInfo DER and the modulus size. `afterDecrypt`: a DER error means a wrong passphrase. */
function rsaPublicFromPKCS8(der, afterDecrypt) {
  try {
    const pki = children(der, top(der, "PrivateKeyInfo"), [TAG.INTEGER, TAG.SEQUENCE, TAG.OCTET_STRING], "PrivateKeyInfo");
    const [algOID] = children(der, pki[1], [TAG.OID], "privateKeyAlgorithm");
    if (hex(contents(der, algOID)) !== OID.rsaEncryption) {
      throw new KeyFormatError("unsupportedKey", "the private key is not an RSA key (Custos KEKs are RSA-OAEP)");
    }
    const rsa = contents(der, pki[2]);
    const fields = children(rsa, top(rsa, "RSAPrivateKey"), [TAG.INTEGER, TAG.INTEGER, TAG.INTEGER], "RSAPrivateKey");
    const n = fields[1], e = fields[2];
    const modulus = contents(rsa, n);
    const bits = (modulus.length - (modulus[0] === 0 ? 1 : 0)) * 8;
    if (bits < 2048) throw new KeyFormatError("unsupportedKey", `the RSA key has ${bits} bits; Custos needs 2048 or more`);
    const rsaPublic = derWrap(TAG.SEQUENCE, rsa.subarray(n.tlvStart, n.end), rsa.subarray(e.tlvStart, e.end));
    const spki = derWrap(TAG.SEQUENCE, der.subarray(pki[1].tlvStart, pki[1].end),
      derWrap(TAG.BIT_STRING, new Uint8Array([0]), rsaPublic));
    return { spki, bits };
  } catch (e) {
    if (e instanceof DERError) {
      if (afterDecrypt) throw wrongPassphrase();
      throw new KeyFormatError("invalidKey", `the private key is damaged: ${e.message}`);
    }
    throw e;
  }
}
