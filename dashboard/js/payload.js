// Plaintext payloads of opened captures (docs/CAPTURE.md "Payload formats"):
// CFRM frame (metadata JSON + PNG), CVPK video packet (metadata JSON + one AV1 temporal unit),
// keystroke chunk (UTF-8 JSON), generic bytes.

/** A payload that does not match its format; the message names the field. */
export class PayloadError extends Error {
  constructor(message) {
    super(message);
    this.name = "PayloadError";
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function startsWith(b, ascii) {
  if (b.length < ascii.length) return false;
  for (let i = 0; i < ascii.length; i++) if (b[i] !== ascii.charCodeAt(i)) return false;
  return true;
}

function json(bytes, what) {
  let value;
  try {
    value = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    throw new PayloadError(`${what} is not UTF-8 JSON (${e.message})`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new PayloadError(`${what} is not a JSON object`);
  return value;
}

function need(obj, field, type, what) {
  const v = obj[field];
  const ok = type === "int" ? Number.isSafeInteger(v) : typeof v === type;
  if (!ok) throw new PayloadError(`${what}: field "${field}" is ${v === undefined ? "missing" : JSON.stringify(v)}, expected ${type === "int" ? "an integer" : `a ${type}`}`);
  return v;
}

/** CFRM / CVPK header: magic(4) version(1) M(u32) metadata(M) rest. */
function split(plaintext, magic) {
  if (plaintext.length < 9) throw new PayloadError(`${magic} payload: ${plaintext.length} bytes, shorter than its 9-byte header`);
  if (plaintext[4] !== 1) throw new PayloadError(`${magic} payload: version ${plaintext[4]} at byte 4 (expected 1)`);
  const m = ((plaintext[5] << 24) >>> 0) + (plaintext[6] << 16) + (plaintext[7] << 8) + plaintext[8];
  if (9 + m > plaintext.length) throw new PayloadError(`${magic} payload: metadata length ${m} at byte 5 runs past the payload`);
  return { meta: json(plaintext.subarray(9, 9 + m), `${magic} metadata`), rest: plaintext.subarray(9 + m) };
}

function checkGeometry(meta, what) {
  for (const f of ["width", "height", "monitor", "x", "y", "captureTimeMs"]) need(meta, f, "int", what);
  need(meta, "monitorName", "string", what);
  if (meta.width < 1 || meta.height < 1 || meta.width > 16384 || meta.height > 16384) {
    throw new PayloadError(`${what}: size ${meta.width}×${meta.height} is out of range`);
  }
}

/**
 * @param {"screen"|"keystrokes"|"generic"} kind the blob header's capture kind
 * @param {Uint8Array} plaintext
 * @returns {{type:"frame", meta, png: Uint8Array} | {type:"video", meta, packet: Uint8Array} |
 *   {type:"keys", chunk} | {type:"generic", bytes: Uint8Array}}
 *   video meta: codec, keyframe, width, height, monitor, monitorName, x, y, captureTimeMs,
 *   streamID (32 hex), packetIndex, groupStart; keys chunk: startMs, endMs, windowTitle, wmClass,
 *   keys [{text, timeMs, pressed?}]
 * @throws {PayloadError}
 */
export function decodePayload(kind, plaintext) {
  if (kind === "screen") {
    if (startsWith(plaintext, "CFRM")) {
      const { meta, rest } = split(plaintext, "CFRM");
      checkGeometry(meta, "frame metadata");
      if (!PNG_SIGNATURE.every((b, i) => rest[i] === b)) throw new PayloadError("frame payload: the image after the metadata is not a PNG");
      return { type: "frame", meta, png: rest };
    }
    if (startsWith(plaintext, "CVPK")) {
      const { meta, rest } = split(plaintext, "CVPK");
      const what = "video packet metadata";
      checkGeometry(meta, what);
      need(meta, "codec", "string", what);
      need(meta, "keyframe", "boolean", what);
      need(meta, "packetIndex", "int", what);
      need(meta, "groupStart", "int", what);
      if (!/^[0-9a-f]{32}$/.test(need(meta, "streamID", "string", what))) throw new PayloadError(`${what}: streamID is not 32 lowercase hex digits`);
      if (meta.keyframe !== (meta.groupStart === meta.packetIndex)) {
        throw new PayloadError(`${what}: keyframe ${meta.keyframe} disagrees with groupStart ${meta.groupStart} and packetIndex ${meta.packetIndex}`);
      }
      if (rest.length === 0) throw new PayloadError("video packet payload: no packet after the metadata");
      return { type: "video", meta, packet: rest };
    }
    throw new PayloadError("screen payload starts with neither CFRM (frame) nor CVPK (video packet)");
  }
  if (kind === "keystrokes") {
    const chunk = json(plaintext, "keystroke chunk");
    const what = "keystroke chunk";
    need(chunk, "startMs", "int", what);
    need(chunk, "endMs", "int", what);
    need(chunk, "windowTitle", "string", what);
    need(chunk, "wmClass", "string", what);
    if (!Array.isArray(chunk.keys)) throw new PayloadError(`${what}: field "keys" is not an array`);
    chunk.keys.forEach((k, i) => {
      need(k, "text", "string", `${what} key ${i}`);
      need(k, "timeMs", "int", `${what} key ${i}`);
    });
    return { type: "keys", chunk };
  }
  return { type: "generic", bytes: plaintext };
}

/** The typed text of a chunk: presses only, in order (releases carry pressed:false). */
export function chunkText(chunk) {
  return chunk.keys.filter((k) => k.pressed !== false).map((k) => k.text).join("");
}
