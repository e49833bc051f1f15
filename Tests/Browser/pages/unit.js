// Module tests of the dashboard's crypto core, payloads and player against real vectors made by
// run.py (fixtures.py): openssl keys, `custos seal` files, `custos-agent record` recordings.
import { FormatError, headerMismatch, isValidUserName, ITEM_STATUS, parseBlobHeader, parseDEKRecord, splitRecords, splitSealedAnswer } from "/js/format.js";
import { cliComponent, itemFolder } from "/js/export.js";
import { h, safeText, setText } from "/js/ui.js";
import { CONVERT_COMMAND, unlockKey, unlockPrivateKey } from "/js/keys.js";
import { KeyRing, openStream } from "/js/envelope.js";
import { chunkText, decodePayload } from "/js/payload.js";
import { MonitorPlayer } from "/js/player.js";
import { videoRuns, webmForRun, WebMWriter } from "/js/webm.js";
import { crc32, ZipWriter } from "/js/zip.js";
import * as vault from "/js/vault.js";
import { artifact, assert, assertEqual, fetchBytes, fetchText, rejects, run, test } from "/tests/harness.js";

const F = "/fixtures/";
const m = await (await fetch(F + "manifest.json")).json();
const pem = await fetchText(F + m.keys.pbes2);
const unlocked = await unlockKey(pem, m.passphrase);

function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
function near(actual, expected, tolerance, what) {
  assert(actual.every((v, i) => Math.abs(v - expected[i]) <= tolerance),
    `${what}: pixel ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)} ± ${tolerance}`);
}
function pixel(canvas, x, y) { return Array.from(canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)); }
function flip(bytes, at) { const c = bytes.slice(); c[at] ^= 0x01; return c; }
async function ringFor(records) {
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  for (const r of records.filter((r) => r.type === 1)) await ring.addDEKRecord(r.bytes);
  return ring;
}

// ---- keys ----
test("keys: an `openssl genrsa -aes256` key (PKCS#8 PBES2) unlocks to a non-extractable RSA-OAEP SHA-256 key", async () => {
  const k = unlocked.privateKey;
  assertEqual(k.type, "private", "type");
  assertEqual(k.extractable, false, "extractable");
  assertEqual(k.algorithm.name, "RSA-OAEP", "algorithm");
  assertEqual(k.algorithm.hash.name, "SHA-256", "hash");
  assertEqual(k.algorithm.modulusLength, 2048, "modulus");
  assertEqual(unlocked.kekID, m.kekID, "KEK id (SHA-256 of the SPKI) as `custos keys id` prints it");
  assertEqual(unlocked.bits, 2048, "bits");
  const again = await unlockPrivateKey(pem, m.passphrase);
  assert(again instanceof CryptoKey, "unlockPrivateKey returns a CryptoKey");
  await rejects(crypto.subtle.exportKey("pkcs8", k), null, null, "exporting the key");
});
test("keys: a wrong passphrase is refused with a clear error", async () => {
  await rejects(unlockKey(pem, m.passphrase + "x"), "wrongPassphrase", "wrong passphrase", "wrong passphrase");
  await rejects(unlockKey(pem, "Correct horse battery staple"), "wrongPassphrase", "wrong passphrase", "case changed");
  await rejects(unlockKey(pem, ""), "wrongPassphrase", "type its passphrase", "empty passphrase");
});
test("keys: a traditional Proc-Type PEM (`openssl genrsa -traditional -aes256`) names the openssl pkcs8 -topk8 command", async () => {
  const e = await rejects(unlockKey(await fetchText(F + m.keys.traditional), m.passphrase), "traditionalPEM", CONVERT_COMMAND, "traditional");
  assert(e.message.includes("Proc-Type ENCRYPTED, AES-256-CBC"), e.message);
  assert(CONVERT_COMMAND.startsWith("openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256"), CONVERT_COMMAND);
});
test("keys: the public key, garbage and a damaged key file are refused with what they are", async () => {
  await rejects(unlockKey(await fetchText(F + m.keys.publicKey), m.passphrase), "notPrivateKey", "choose keypair.pem", "public key");
  await rejects(unlockKey("hello", m.passphrase), "invalidKey", "not a PEM key file", "garbage");
  // One byte changed inside the encrypted key bytes: a wrong key comes out (never a crash, never a key).
  const lines = pem.trim().split("\n");
  const body = Uint8Array.from(atob(lines.slice(1, -1).join("")), (c) => c.charCodeAt(0));
  const bad = flip(body, body.length - 40);
  let b64 = "";
  for (const x of bad) b64 += String.fromCharCode(x);
  const damaged = `${lines[0]}\n${btoa(b64).replace(/.{64}/g, "$&\n")}\n${lines[lines.length - 1]}\n`;
  await rejects(unlockKey(damaged, m.passphrase), "wrongPassphrase", null, "damaged ciphertext");
  const cut = `${lines[0]}\n${lines.slice(1, 5).join("\n")}\n${lines[lines.length - 1]}\n`;
  await rejects(unlockKey(cut, m.passphrase), "invalidKey", "damaged", "cut key");
});

// ---- format ----
test("format: records of a `custos seal` file split and parse (offsets of docs/FORMAT.md)", async () => {
  const bytes = await fetchBytes(F + m.generic.sealed);
  const records = splitRecords(bytes);
  assertEqual(records.length, 2, "records");
  assertEqual(records[0].type, 1, "first is a DEK record");
  const dek = parseDEKRecord(records[0].bytes);
  assertEqual(dek.kekID, m.kekID, "DEK record KEK id");
  assertEqual(dek.agentID, "pc-seal", "agent id");
  assertEqual(dek.wrappedDEK.length, 256, "wrapped DEK length (RSA-2048)");
  const h = parseBlobHeader(records[1].bytes);
  assertEqual(h.kind, "generic", "kind");
  assertEqual(h.dekID, dek.dekID, "blob names the DEK");
  assertEqual(h.sequence, 0, "sequence");
  assertEqual(h.plaintextLength, 70000, "plaintext length");
  assert(Math.abs(h.timeMs - Date.now()) < 3600_000, `capture time ${h.timeMs} is now`);
});
test("format: truncated, bad magic, unknown version and trailing bytes are refused naming the field", async () => {
  const bytes = await fetchBytes(F + m.generic.sealed);
  let e = await rejects((async () => splitRecords(bytes.subarray(0, bytes.length - 1)))(), "truncated", "record 1", "cut stream");
  assert(e instanceof FormatError, "FormatError");
  await rejects((async () => splitRecords(flip(bytes, 0)))(), "malformed", "magic", "magic");
  await rejects((async () => splitRecords(flip(bytes, 4)))(), "unsupportedVersion", "byte 4", "version");
  const records = splitRecords(bytes);
  const longer = new Uint8Array(records[1].bytes.length + 1);
  longer.set(records[1].bytes);
  await rejects((async () => parseBlobHeader(longer))(), "malformed", "declares", "trailing byte");
});

test("format: a /sealed answer splits into records and CPLN status entries (04 unreadable, 01 gone) naming their blob", async () => {
  const bytes = await fetchBytes(F + m.generic.sealed);
  const [dek, blob] = splitRecords(bytes);
  const id = parseBlobHeader(blob.bytes).blobID;
  // A status entry as the collector writes it (docs/API.md "Opened items"): CPLN 01 status u32(26) id.
  const entry = (status, idHex) => Uint8Array.from([0x43, 0x50, 0x4c, 0x4e, 1, status, 0, 0, 0, 26, ...idHex.match(/../g).map((x) => parseInt(x, 16))]);
  const other = "00112233445566778899aabbccddeeff";
  const answer = new Uint8Array([...dek.bytes, ...entry(4, other), ...blob.bytes, ...entry(1, id)]);
  const { records, statuses } = splitSealedAnswer(answer);
  assertEqual(records.map((r) => r.type).join(","), "1,2", "the two records");
  assertEqual(JSON.stringify(statuses.map((s) => [s.id, s.status])), JSON.stringify([[other, ITEM_STATUS.unreadable], [id, ITEM_STATUS.notFound]]), "statuses");
  assertEqual(records[1].bytes.length, blob.bytes.length, "the blob after the entry, whole");
  await rejects((async () => splitSealedAnswer(answer.subarray(0, dek.bytes.length + 20)))(), "truncated", "26 bytes", "a cut entry");
  await rejects((async () => splitSealedAnswer(new Uint8Array([...entry(0, other)])))(), "malformed", "status 0", "status 00 (a payload) is not a /sealed entry");
  assertEqual(splitRecords(bytes).length, 2, "a plain record stream still splits");
});

// ---- ui ----
test("ui: bidi and control characters (U+202E, U+200E, C0, C1) show escaped as SafeText writes them, everywhere h() puts text", async () => {
  const title = "invoice\u202Etxt.exe";
  assertEqual(safeText(title), "invoice\\u{202E}txt.exe", "U+202E");
  assertEqual(safeText("a\u200Eb\u200Fc\u061Cd\u2066e\u2069f"), "a\\u{200E}b\\u{200F}c\\u{61C}d\\u{2066}e\\u{2069}f", "bidi marks and isolates");
  assertEqual(safeText("x\u001B[31my\u0000\u007F\u0085\u009Bz\n"), "x\\u{1B}[31my\\u{0}\\u{7F}\\u{85}\\u{9B}z\\u{A}", "C0, DEL, C1");
  assertEqual(safeText("\u2028\u2029\uFEFF"), "\\u{2028}\\u{2029}\\u{FEFF}", "separators and BOM");
  assertEqual(safeText("Ünïcödé 文字 ✓ plain"), "Ünïcödé 文字 ✓ plain", "plain text unchanged");
  assertEqual(safeText(safeText(title)), safeText(title), "idempotent");
  const el = h("div", { title }, "window: ", title, h("span", { textContent: title }));
  for (const [what, text] of [["text child", el.textContent], ["title attribute", el.getAttribute("title")], ["textContent", el.lastChild.textContent]]) {
    assert(!/[\u202E\u0000-\u001F]/u.test(text) && text.includes("\\u{202E}"), `${what}: ${JSON.stringify(text)}`);
  }
  const p = document.createElement("p");
  setText(p, "\u202Eabc");
  assertEqual(p.textContent, "\\u{202E}abc", "setText");
});

// ---- envelope ----
test("envelope: a `custos seal` generic file opens to the original bytes", async () => {
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  const { items, errors } = await openStream(ring, splitRecords(await fetchBytes(F + m.generic.sealed)));
  assertEqual(errors.length, 0, "errors");
  const plain = await fetchBytes(F + m.generic.plain);
  assertEqual(items[0].plaintext.length, plain.length, "length");
  assert(items[0].plaintext.every((b, i) => b === plain[i]), "plaintext equals the sealed file");
  const p = decodePayload(items[0].header.kind, items[0].plaintext);
  assertEqual(p.type, "generic", "payload type");
});
test("envelope: a sealed keystroke chunk opens and decodes (window title, keys)", async () => {
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  const { items } = await openStream(ring, splitRecords(await fetchBytes(F + m.chunk.sealed)));
  const p = decodePayload(items[0].header.kind, items[0].plaintext);
  assertEqual(p.type, "keys", "payload type");
  assertEqual(p.chunk.windowTitle, "Terminal — bash", "window title");
  assertEqual(chunkText(p.chunk), "hi[Enter]", "text");
});
test("envelope: a changed header byte or ciphertext byte fails authentication and gives no plaintext", async () => {
  const records = splitRecords(await fetchBytes(F + m.generic.sealed));
  const ring = await ringFor(records);
  const blob = records[1].bytes;
  const h = parseBlobHeader(blob);
  for (const [what, at] of [["sequence number", 83], ["capture time", 91], ["agent id", 93], ["blob id", 12],
    ["first ciphertext byte", h.headerLength], ["last ciphertext byte", blob.length - 17], ["tag", blob.length - 1]]) {
    await rejects(ring.open(flip(blob, at)), "authenticationFailed", "authentication failed", what);
  }
  assert((await ring.open(blob)).plaintext.length === 70000, "the untouched blob still opens");
});
// ---- sealed session blobs (record type 3, docs/FORMAT.md "Sealed session blob") ----
test("session blobs: `custos seal --user --display` files of two users parse (user, display, header length) and open in the browser", async () => {
  assertEqual(m.sessions.length, 2, "two users' fixtures");
  for (const f of m.sessions) {
    const records = splitRecords(await fetchBytes(F + f.sealed));
    assertEqual(records.map((r) => r.type).join(","), "1,3", `${f.user}: a DEK record, then a sealed session blob`);
    const h = parseBlobHeader(records[1].bytes);
    assertEqual(h.user, f.user, "user from the header");
    assertEqual(h.display, f.display, "display from the header");
    assertEqual(h.agentID, "pc-seal", "agent id before them");
    const m_ = new TextEncoder().encode(f.user).length, d = new TextEncoder().encode(f.display).length;
    assertEqual(h.headerLength, 95 + "pc-seal".length + m_ + d, "AAD = 95 + n + m + d bytes");
    const { items, errors } = await openStream(await ringFor(records), records);
    assertEqual(errors.length, 0, `${f.user}: errors ${errors.map((e) => e.error.message)}`);
    assertEqual(items.length, 1, `${f.user}: the session blob opened`);
    const p = decodePayload(items[0].header.kind, items[0].plaintext);
    assertEqual(chunkText(p.chunk), "hi[Enter]", `${f.user}: the typed text`);
    assertEqual(items[0].header.user, f.user, "opened header names the user");
  }
  // The plain-blob parse of a type 2 file names no session.
  const plain = parseBlobHeader(splitRecords(await fetchBytes(F + m.generic.sealed))[1].bytes);
  assertEqual(plain.user, null, "type 2: user null");
  assertEqual(plain.display, null, "type 2: display null");
});
test("session blobs: the user and display are authenticated; a name the one rule refuses is malformed before any key is used", async () => {
  const records = splitRecords(await fetchBytes(F + m.sessions[0].sealed));
  const ring = await ringFor(records);
  const blob = records[1].bytes;
  const n = "pc-seal".length, at = 93 + n; // user length byte, then "alice", display length, ":1"
  const changeTo = (offset, ch) => { const c = blob.slice(); c[offset] = ch.charCodeAt(0); return c; };
  await rejects(ring.open(changeTo(at + 1, "A")), "authenticationFailed", "authentication failed", "user alice → Alice");
  await rejects(ring.open(changeTo(at + 1 + 5 + 2, "2")), "authenticationFailed", "authentication failed", "display :1 → :2");
  await rejects(ring.open(changeTo(at + 1, "/")), "malformed", "user name", "a '/' in the user");
  await rejects(ring.open(changeTo(at + 1, "\u001b")), "malformed", "user name", "an escape character in the user");
  const zero = blob.slice(); zero[at] = 0;
  await rejects((async () => parseBlobHeader(zero))(), "malformed", "user name length", "user length 0");
  const long = blob.slice(); long[at] = 250;
  await rejects((async () => parseBlobHeader(long))(), "malformed", "runs past", "user length past the record");
  assert((await ring.open(blob)).plaintext.length > 0, "the untouched blob still opens");
  for (const [name, ok] of [["alice", true], ["CORP\\carol", true], ["j.doe@corp.example", true], ["?", true], ["a/b", false],
    [".", false], ["..", false], ["", false], ["x".repeat(129), false], ["é".repeat(64), true], ["é".repeat(65), false], ["in\u202Evoice", false]]) {
    assertEqual(isValidUserName(name), ok, `isValidUserName(${JSON.stringify(name)})`);
  }
});
test("session blobs: a listing row that disagrees with the opened header is named (the header is the truth)", async () => {
  const records = splitRecords(await fetchBytes(F + m.sessions[1].sealed));
  const { header } = await (await ringFor(records)).open(records[1].bytes);
  const row = { id: header.blobID, agent: "pc-seal", kind: "keystrokes", timeMs: header.timeMs, user: m.sessions[1].user, display: ":2" };
  assertEqual(headerMismatch(header, row).join(","), "", "the right row");
  assertEqual(headerMismatch(header, { ...row, user: "alice" }).join(","), "user", "another user");
  assertEqual(headerMismatch(header, { ...row, user: null, display: null }).join(","), "user,display", "a row without a session");
  assertEqual(headerMismatch(header, { ...row, agent: "pc-x", timeMs: 1 }).join(","), "agent,time", "agent and time");
  const plain = parseBlobHeader(splitRecords(await fetchBytes(F + m.generic.sealed))[1].bytes);
  assertEqual(headerMismatch(plain, { id: plain.blobID, agent: "pc-seal", kind: "generic", timeMs: plain.timeMs, user: "alice", display: ":1" }).join(","),
    "user,display", "a row naming a session for a plain blob");
});
test("session blobs: the export's user folder is the one `custos open` writes (~ and 8 hex of SHA-256 when the name changed)", async () => {
  for (const f of m.sessions) {
    assertEqual(await itemFolder({ agent: "pc-seal", user: f.user }), f.cliFolder, `folder of ${f.user}`);
  }
  assertEqual(await itemFolder({ agent: "pc-seal", user: null }), "pc-seal", "no session: the agent's folder");
  assertEqual(cliComponent('a\\b:c*d?e"f<g>h|i'), "a_b_c_d_e_f_g_h_i", "the characters zip names refuse");
  assertEqual(cliComponent("..hidden"), "hidden", "leading dots");
  const colon = await itemFolder({ agent: "pc-seal", user: "CORP:carol" });
  const backslash = await itemFolder({ agent: "pc-seal", user: "CORP\\carol" });
  assert(colon.startsWith("pc-seal/users/CORP_carol~") && backslash.startsWith("pc-seal/users/CORP_carol~") && colon !== backslash,
    `CORP:carol and CORP\\carol get two folders: ${colon}, ${backslash}`);
});

test("envelope: a DEK record with a changed commitment or committed field is refused (commitmentMismatch); its blobs stay shut", async () => {
  const records = splitRecords(await fetchBytes(F + m.generic.sealed));
  const dek = records[0].bytes;
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  await rejects(ring.addDEKRecord(flip(dek, dek.length - 1)), "commitmentMismatch", "commitment", "commitment byte");
  await rejects(ring.addDEKRecord(flip(dek, 60)), "commitmentMismatch", null, "creation time");
  await rejects(ring.addDEKRecord(flip(dek, 68)), "commitmentMismatch", null, "agent id");
  await rejects(ring.addDEKRecord(flip(dek, 70 + "pc-seal".length + 5)), "unwrapFailed", null, "wrapped DEK byte");
  await rejects(ring.open(records[1].bytes), "dekMismatch", "was not opened", "blob without its DEK");
  assertEqual(ring.size, 0, "no DEK kept");
});
test("envelope: another private key is refused (keyMismatch by KEK id; unwrapFailed without it)", async () => {
  const records = splitRecords(await fetchBytes(F + m.generic.sealed));
  const other = await unlockKey(await fetchText(F + m.keys.other), "another passphrase 42");
  assertEqual(other.kekID, m.otherKEKID, "other KEK id");
  await rejects(new KeyRing(other.privateKey, other.kekID).addDEKRecord(records[0].bytes), "keyMismatch", m.kekID, "by id");
  await rejects(new KeyRing(other.privateKey).addDEKRecord(records[0].bytes), "unwrapFailed", null, "by RSA");
});
test("envelope: forget() drops the keys: nothing opens after it", async () => {
  const records = splitRecords(await fetchBytes(F + m.generic.sealed));
  const ring = await ringFor(records);
  ring.forget();
  assertEqual(ring.size, 0, "size");
  await rejects(ring.open(records[1].bytes), "dekMismatch", null, "after forget");
  await rejects(ring.addDEKRecord(records[0].bytes), "keyMismatch", "locked", "add after forget");
});

// ---- agent recordings ----
let video = null;
test("agent recording (video): every record opens; packets are CVPK streams; the keystroke chunk holds the typed text", async () => {
  const records = splitRecords(await fetchBytes(F + m.video.sealed));
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  const { items, errors } = await openStream(ring, records);
  assertEqual(errors.length, 0, `errors ${errors.map((e) => e.error.message).join("; ")}`);
  const payloads = items.map((i) => ({ header: i.header, ...decodePayload(i.header.kind, i.plaintext) }));
  const packets = payloads.filter((p) => p.type === "video");
  assert(packets.length >= 3, `${packets.length} video packets (repainted during the recording)`);
  assert(packets[0].meta.keyframe && packets[0].meta.packetIndex === 0, "first packet is keyframe 0");
  assert(packets[0].meta.codec.startsWith("av01."), `codec ${packets[0].meta.codec}`);
  assertEqual(packets[0].meta.width, 320, "width");
  const typed = payloads.filter((p) => p.type === "keys").map((p) => chunkText(p.chunk)).join("");
  assert(typed.includes(m.video.typed), `typed text "${typed}" holds "${m.video.typed}"`);
  video = packets;
});
test("sealed session blobs (type 3, docs/FORMAT.md): the agent's records name user and display; both are authenticated", async () => {
  const records = splitRecords(await fetchBytes(F + m.video.sealed));
  const session = records.filter((r) => r.type === 3);
  assertEqual(session.length, records.filter((r) => r.type !== 1).length, "every blob of a display=auto agent is type 3");
  const blob = session[0].bytes;
  const h = parseBlobHeader(blob);
  assert(typeof h.user === "string" && h.user.length > 0, `user ${h.user}`);
  assert(/^:\d+$/.test(h.display), `display ${h.display}`);
  const n = blob[92], mu = blob[93 + n];
  assertEqual(h.headerLength, 95 + n + mu + blob[94 + n + mu], "header length 95 + n + m + d");
  const ring = await ringFor(records);
  for (const [what, at] of [["user name", 94 + n], ["display", h.headerLength - 1]]) {
    await rejects(ring.open(flip(blob, at)), "authenticationFailed", "authentication failed", what);
  }
  assertEqual((await ring.open(blob)).header.display, h.display, "the untouched blob opens");
});
test("webcodecs: the recorded AV1 packets decode; the first picture shows the painted colour, the last the repainted one", async () => {
  assert(video, "needs the previous test");
  const meta = video[0].meta;
  const support = await VideoDecoder.isConfigSupported({ codec: meta.codec, codedWidth: meta.width, codedHeight: meta.height });
  assert(support.supported, `VideoDecoder supports ${meta.codec}`);
  const canvas = document.createElement("canvas");
  document.getElementById("scratch").append(canvas);
  const player = new MonitorPlayer(canvas);
  player.setPackets(video);
  const first = await player.showAt(player.range[0]);
  assertEqual(first.packetIndex, 0, "first shown packet");
  assertEqual(canvas.width, 320, "canvas at the frame's own width");
  assertEqual(canvas.height, 240, "height");
  near(pixel(canvas, 300, 220), rgb(m.video.first), 10, "first picture");
  const last = await player.showAt(player.range[1]);
  assertEqual(last.packetIndex, video.length - 1, "last shown packet");
  near(pixel(canvas, 300, 220), rgb(m.video.last), 10, "last picture");
  // Seek back to the start and forth again: decoding restarts at the keyframe.
  assertEqual((await player.showAt(player.range[0] + 1)).packetIndex, 0, "seek back");
  near(pixel(canvas, 10, 10), rgb(m.video.first), 10, "after seeking back");
  assert(player.stats.resets >= 2, `decoder reset for the backward seek (${player.stats.resets})`);
  const canvas2 = document.createElement("canvas");
  document.getElementById("scratch").append(canvas2);
  player.canvas = canvas2; player.ctx = canvas2.getContext("2d");
  await player.showAt(player.range[1]);
  assertEqual(player.stats.flushes, 0, "pictures came out without the flush fallback (optimizeForLatency)");
  // A lone keyframe (a tile's first picture) comes out without a flush too.
  const lone = new MonitorPlayer(document.createElement("canvas"));
  lone.setPackets([video[0]]);
  const t = performance.now();
  assertEqual((await lone.showAt(video[0].meta.captureTimeMs)).packetIndex, 0, "lone keyframe shown");
  assertEqual(lone.stats.flushes, 0, `lone keyframe without the flush fallback (${Math.round(performance.now() - t)} ms)`);
  lone.close();
  player.close();
  // A seek decoded in one batch on the throughput decoder (flushed), as far seeks are (batchAfter 1
  // here: the recording is short); playback then goes on from there on the playback decoder.
  const batched = new MonitorPlayer(document.createElement("canvas"), { batchAfter: 1 });
  batched.setPackets(video);
  const superseded = batched.showAt(player.range[1]);
  const end = await batched.showAt(player.range[1] - 1);
  assertEqual(await superseded, null, "a batch superseded by a newer seek gives null");
  assertEqual(end.packetIndex, video.length - 2, "the newer seek's packet");
  assertEqual((await batched.showAt(player.range[1])).packetIndex, video.length - 1, "last packet by batch");
  near(pixel(batched.canvas, 300, 220), rgb(m.video.last), 10, "batch: the last picture");
  assert(batched.stats.batches >= 2 && batched.stats.flushes === 0, `batches ${batched.stats.batches}, flush fallbacks ${batched.stats.flushes}`);
  assertEqual((await batched.showAt(player.range[0])).packetIndex, 0, "back to the keyframe (playback decoder)");
  near(pixel(batched.canvas, 10, 10), rgb(m.video.first), 10, "batch, then keyframe: the first picture");
  batched.close();
});
test("agent recording (png): the CFRM frame's PNG decodes at its own size with the painted colour exactly", async () => {
  const ring = new KeyRing(unlocked.privateKey, unlocked.kekID);
  const { items, errors } = await openStream(ring, splitRecords(await fetchBytes(F + m.png.sealed)));
  assertEqual(errors.length, 0, "errors");
  const frames = items.map((i) => decodePayload(i.header.kind, i.plaintext)).filter((p) => p.type === "frame");
  assert(frames.length >= 1, "a frame");
  const f = frames[0];
  assertEqual(f.meta.width, 320, "meta width");
  const bitmap = await createImageBitmap(new Blob([f.png], { type: "image/png" }));
  assertEqual(bitmap.width, f.meta.width, "PNG width");
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width; canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  document.getElementById("scratch").append(canvas);
  near(pixel(canvas, 160, 120), rgb(m.png.colour), 0, "PNG pixel");
});

test("webm.js: the recorded packets make one WebM file that Chromium plays (size, duration, last picture's colour)", async () => {
  assert(video, "needs the video test");
  const { runs, skipped } = videoRuns(video);
  assertEqual(runs.length, 1, "runs");
  assertEqual(skipped, 0, "skipped");
  const file = webmForRun(runs[0]);
  artifact("recording.webm", file);
  artifact("recording.webm.json", new TextEncoder().encode(JSON.stringify({ packets: video.length,
    durationMs: video[video.length - 1].meta.captureTimeMs - video[0].meta.captureTimeMs + (video[video.length - 1].meta.captureTimeMs - video[video.length - 2].meta.captureTimeMs) })));
  const el = document.createElement("video");
  el.muted = true;
  el.src = URL.createObjectURL(new Blob([file], { type: "video/webm" }));
  await new Promise((resolve, reject) => { el.onloadeddata = resolve; el.onerror = () => reject(new Error(`<video> error ${el.error?.code} ${el.error?.message}`)); });
  assertEqual(el.videoWidth, 320, "videoWidth");
  assertEqual(el.videoHeight, 240, "videoHeight");
  el.currentTime = el.duration - 0.05;
  await new Promise((resolve) => { el.onseeked = resolve; });
  const c = document.createElement("canvas");
  c.width = 320; c.height = 240;
  c.getContext("2d").drawImage(el, 0, 0);
  document.getElementById("scratch").append(c);
  near(pixel(c, 300, 220), rgb(m.video.last), 10, "the WebM's last picture");
  // The writer refuses what WebMWriter.swift refuses.
  const w = new WebMWriter();
  assert((() => { try { w.append(video[1].packet, 1, false); return false; } catch (e) { return e.name === "WebMError" && e.message.includes("must start with a keyframe"); } })(), "delta first");
  w.append(video[0].packet, 10, true);
  assert((() => { try { w.append(video[1].packet, 10, false); return false; } catch (e) { return e.message.includes("not after"); } })(), "time not increasing");
  assert((() => { try { w.append(video[1].packet, 20, true); return false; } catch (e) { return e.message.includes("flagged as a keyframe"); } })(), "false keyframe flag");
});
test("zip.js: a store-only zip with UTF-8 names (checked by Python's zipfile)", async () => {
  assertEqual(crc32(new TextEncoder().encode("123456789")), 0xcbf43926, "CRC-32 check value");
  const z = new ZipWriter();
  z.add("manifest.json", JSON.stringify({ hello: "wörld" }), Date.UTC(2026, 11, 7, 12, 30, 10));
  z.add("pc-1/keystrokes/Übersicht — bash.txt", "typed ✓");
  z.add("pc-1/screens/bytes.bin", await fetchBytes(F + m.generic.plain));
  assert((() => { try { z.add("../evil", "x"); return false; } catch (e) { return e.name === "ZipError"; } })(), "a '..' name is refused");
  assert((() => { try { z.add("manifest.json", "x"); return false; } catch (e) { return e.name === "ZipError"; } })(), "a repeated name is refused");
  artifact("test.zip", new Uint8Array(await z.finish().arrayBuffer()));
});

test("vault.js: unlock from a File, idle lock after the setting's minutes without input, forget on pagehide", async () => {
  vault.watchIdle();
  await rejects(vault.unlock(new File([pem], "keypair.pem"), "wrong"), "wrongPassphrase", null, "wrong passphrase");
  assertEqual(vault.isUnlocked(), false, "not unlocked by a wrong passphrase");
  const events = [];
  vault.subscribe((e) => events.push(`${e.type}:${e.reason ?? ""}`));
  await vault.unlock(new File([pem], "keypair.pem"), m.passphrase);
  assertEqual(vault.unlockedKEK(), m.kekID, "unlocked KEK");
  assertEqual(vault.idleMinutes(), 15, "default idle minutes");
  assert((() => { try { vault.setIdleMinutes(0); return false; } catch { return true; } })(), "0 minutes refused");
  vault.setIdleMinutes(2);
  assertEqual(vault.checkIdle(Date.now() + 60_000), false, "not idle after 1 of 2 minutes");
  assertEqual(vault.checkIdle(Date.now() + 121_000), true, "idle after 2 minutes");
  assertEqual(vault.isUnlocked(), false, "locked by idle");
  await vault.unlock(new File([pem], "keypair.pem"), m.passphrase);
  dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  assertEqual(vault.isUnlocked(), false, "locked by pagehide");
  assertEqual(events.join(","), "unlock:,lock:idle,unlock:,lock:pagehide", "events");
  localStorage.removeItem("custos.idleLockMinutes");
});

await run();
