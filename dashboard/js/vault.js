// What the page has decrypted, and the key that did it: module-level variables only (never
// storage, never sent anywhere). Forgotten on lock(): the Lock button, idle time (setting,
// default 15 min) and pagehide. Items sealed to the collector's own KEK ("collector", mixed
// fleet) are fetched opened from the server and need no key.

import { api } from "./api.js";
import { KeyRing } from "./envelope.js";
import { ITEM_STATUS, headerMismatch, isBlobRecord, splitSealedAnswer } from "./format.js";
import { unlockKey } from "./keys.js";
import { decodePayload } from "./payload.js";

let ring = null; // KeyRing of the unlocked private key, or null
let kekID = null;
const decoded = new Map(); // blob id → {payload} | {error}
const listeners = new Set();

/** fn(event) for "unlock", "lock", "decoded". */
export function subscribe(fn) { listeners.add(fn); return () => listeners.delete(fn); }
function emit(event) { for (const fn of listeners) { try { fn(event); } catch (e) { console.error(e); } } }

export function isUnlocked() { return ring !== null; }
export function unlockedKEK() { return kekID; }

/**
 * Unlocks the private key read from the file picker (File API: the file never leaves the page).
 * @param {File} file keypair.pem
 * @param {string} passphrase
 * @returns {Promise<{unprotected: boolean}>} unprotected: the file held an unencrypted key (no
 *   passphrase protects it; the one given was not used), also in the "unlock" event
 * @throws {KeyError|KeyFormatError} as keys.js
 */
export async function unlock(file, passphrase) {
  const text = await file.text();
  const { privateKey, kekID: id, unprotected } = await unlockKey(text, passphrase);
  lock("replaced", false);
  ring = new KeyRing(privateKey, id);
  kekID = id;
  emit({ type: "unlock", kekID: id, unprotected });
  return { unprotected };
}

/**
 * Forgets the key, every DEK and every end-to-end plaintext the page holds; with `everything`
 * (logout, session end) also what the collector opened for this account.
 */
export function lock(reason = "lock", report = true, everything = false) {
  const hadKey = ring !== null;
  const had = hadKey || decoded.size > 0;
  if (ring) ring.forget();
  ring = null;
  kekID = null;
  for (const [id, d] of decoded) if (everything || !d.sealedToCollector) decoded.delete(id);
  if (had) emit({ type: "lock", reason });
  if (hadKey && report) api.clientReport("lock", 0, `keys forgotten (${reason})`).catch(() => {});
}

/** What the page holds for a blob: {payload, sealedToCollector} or {error}, or undefined. */
export function get(blobID) { return decoded.get(blobID); }

/** Whether `item` (a listing row) can be shown now: collector-sealed always, e2ee when unlocked. */
export function canOpen(item) { return item.sealedTo === "collector" || ring !== null; }

const BATCH = 500;

/**
 * Opens listing items that are not yet open: e2ee ones through POST /sealed and the key ring
 * (needs unlock), collector-sealed ones through GET …/plain. Items that fail keep an error and
 * show no plaintext. Reports the count to the collector's audit log (client-reported).
 * @param {object[]} items listing rows {id, kind, dekID, sealedTo, …}
 * An item the collector could not send (gone since the listing, or its stored bytes unreadable:
 * a status entry in the /sealed answer; a JSON error from …/plain) keeps an error naming why.
 * @returns {Promise<{opened: number, failed: number, missing: number, unreadable: string[]}>}
 *   `unreadable`: ids whose stored bytes the collector cannot read (counted in `failed`)
 */
export async function open(items) {
  const todo = items.filter((i) => !decoded.has(i.id) && canOpen(i));
  let opened = 0, failed = 0, missing = 0;
  const unreadable = [];
  const e2ee = todo.filter((i) => i.sealedTo !== "collector");
  const plain = todo.filter((i) => i.sealedTo === "collector");
  for (let at = 0; at < e2ee.length; at += BATCH) {
    const batch = e2ee.slice(at, at + BATCH);
    const r = ring;
    if (!r) break;
    const deks = [...new Set(batch.map((i) => i.dekID))].filter((d) => !r.has(d));
    const answer = await api.sealed(batch.map((i) => i.id), deks);
    missing += answer.missing;
    if (r !== ring) break; // locked meanwhile: keep nothing
    const { records, statuses } = splitSealedAnswer(answer.bytes);
    const byID = new Map(batch.map((i) => [i.id, i]));
    for (const st of statuses) {
      if (!byID.has(st.id) || decoded.has(st.id)) continue;
      if (st.status === ITEM_STATUS.unreadable) {
        decoded.set(st.id, { error: new Error(`the collector cannot read this item's stored bytes (blob file missing or damaged; see the collector's log): ${st.id}`) });
        unreadable.push(st.id);
        failed++;
      } else {
        decoded.set(st.id, { error: new Error(`the collector no longer has this item (removed since the listing): ${st.id}`) });
        missing++;
      }
    }
    const dekErrors = new Map();
    for (const rec of records.filter((x) => x.type === 1)) {
      try { await r.addDEKRecord(rec.bytes); } catch (e) { dekErrors.set(rec.offset, e); }
    }
    for (const rec of records.filter((x) => isBlobRecord(x.type))) {
      let id = null;
      try {
        const { header, plaintext } = await r.open(rec.bytes);
        id = header.blobID;
        if (!byID.has(id)) continue; // not asked for
        if (r !== ring) break;
        const differ = headerMismatch(header, byID.get(id));
        if (differ.length) {
          // The authenticated header is the truth: a listing row that says otherwise is shown as
          // an error, never the plaintext under the row's (wrong) agent, user or time.
          decoded.set(id, { error: new Error(`the blob's header does not match its listing row (${differ.join(", ")} differ): ${id}`), header });
          failed++;
          continue;
        }
        decoded.set(id, { payload: decodePayload(header.kind, plaintext), header });
        opened++;
      } catch (e) {
        id = id ?? blobIDOf(rec.bytes);
        if (id && byID.has(id)) { decoded.set(id, { error: e }); failed++; }
      }
    }
    for (const i of batch) if (!decoded.has(i.id) && ring) { decoded.set(i.id, { error: new Error("the collector did not return this item") }); failed++; }
  }
  await pool(plain, 4, async (i) => {
    try {
      const bytes = await api.plain(i.id);
      decoded.set(i.id, { payload: decodePayload(i.kind, bytes), sealedToCollector: true });
      opened++;
    } catch (e) {
      decoded.set(i.id, { error: e, sealedToCollector: true });
      failed++;
      if (e?.status === 500) unreadable.push(i.id);
    }
  });
  if (opened) api.clientReport("decrypted", opened, `blobs: ${todo.slice(0, 20).map((i) => i.id).join(",")}${todo.length > 20 ? ",…" : ""}`).catch(() => {});
  if (todo.length) emit({ type: "decoded", opened, failed });
  return { opened, failed, missing, unreadable };
}

function blobIDOf(bytes) {
  if (bytes.length < 27) return null;
  let s = "";
  for (const b of bytes.subarray(11, 27)) s += b.toString(16).padStart(2, "0");
  return s;
}

async function pool(list, n, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, list.length) }, async () => {
    while (next < list.length) await fn(list[next++]);
  }));
}

// ---- idle lock and pagehide ----

const IDLE_KEY = "custos.idleLockMinutes";
let lastActivity = Date.now();

/** The idle-lock setting in minutes (a preference, kept in localStorage; default 15). */
export function idleMinutes() {
  const v = Number(localStorage.getItem(IDLE_KEY));
  return Number.isFinite(v) && v >= 1 && v <= 480 ? v : 15;
}

export function setIdleMinutes(v) {
  const n = Math.round(Number(v));
  if (!(n >= 1 && n <= 480)) throw new RangeError("idle lock: 1 to 480 minutes");
  localStorage.setItem(IDLE_KEY, String(n));
}

/** Locks when the key is unlocked and no input came for the idle setting; true if it locked. */
export function checkIdle(now = Date.now()) {
  if (ring && now - lastActivity > idleMinutes() * 60_000) {
    lock("idle");
    return true;
  }
  return false;
}

/** Starts the idle timer and the pagehide handler (once). */
export function watchIdle() {
  for (const ev of ["pointerdown", "keydown", "wheel", "pointermove", "touchstart"]) {
    addEventListener(ev, () => { lastActivity = Date.now(); }, { passive: true, capture: true });
  }
  setInterval(() => checkIdle(), 5_000);
  addEventListener("pagehide", () => lock("pagehide", false, true));
}
