// Exports built in the browser from what the page decrypted (nothing is sent anywhere; the
// collector only gets a client-reported count): a zip of a selection (PNG frames, one WebM per
// run of a video stream, keystrokes as CSV and JSON, manifest.json) and a session's video as WebM.

import { api } from "./api.js";
import * as media from "./media.js";
import { hex } from "./format.js";
import { chunkText } from "./payload.js";
import { needsEscape } from "./ui.js";
import * as vault from "./vault.js";
import { videoRuns, webmForRun } from "./webm.js";
import { ZipWriter } from "./zip.js";

/** A file name part: letters, digits, '.', '_', '-' (others become '_'), at most 64 characters. */
export function namePart(s) {
  const t = String(s).replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "_").slice(0, 64);
  return t || "_";
}

/**
 * The CLI's file-name component (OutputNaming.component in Sources/Admin/Decryptor.swift) of a
 * user name: controls and bidi controls dropped and "/" made "_" (SafeText.fileNameComponent),
 * cut at `maxBytes` UTF-8 bytes on a character boundary, `\ : * ? " < > |` made "_", leading
 * dots and outer spaces removed; "_" when nothing is left.
 */
export function cliComponent(s, maxBytes = 64) {
  const enc = new TextEncoder();
  let out = "", bytes = 0;
  for (const c of String(s)) {
    if (needsEscape(c.codePointAt(0))) continue;
    const ch = c === "/" ? "_" : c;
    const n = enc.encode(ch).length;
    if (bytes + n > maxBytes) break;
    bytes += n;
    out += ch;
  }
  if (out === "" || out === "." || out === "..") out = "_";
  out = out.replace(/[\\:*?"<>|]/g, "_").replace(/^\.+/, "").trim();
  return out || "_";
}

/**
 * The folder of a listing row's files, as `custos decrypt` names it (OutputNaming.folder):
 * `<agent>`, or `<agent>/users/<user>` for a capture of a graphical session. A user name the
 * file-name rule changed gets "~" and the first 8 hex digits of its SHA-256 (WebCrypto), so
 * `CORP\carol` and `CORP:carol` never share a folder.
 * @param {{agent: string, user?: string|null}} item
 * @returns {Promise<string>}
 */
export async function itemFolder(item) {
  const agent = namePart(item.agent);
  if (!item.user) return agent;
  const name = cliComponent(item.user, 64);
  if (name === item.user) return `${agent}/users/${name}`;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(item.user)));
  return `${agent}/users/${name}~${hex(digest).slice(0, 8)}`;
}

/** 20261207T160653.123Z */
export function stamp(ms) { return new Date(ms).toISOString().replace(/[-:]/g, ""); }

/** One CSV field (RFC 4180 quoting); a leading = + - @ or control gets a "'" so that a
 *  spreadsheet does not run it as a formula. */
function csvField(v) {
  let s = String(v ?? "");
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return `"${s.replace(/"/g, '""')}"`;
}

export function keystrokesCSV(rows) {
  const lines = [["time", "agent", "user", "display", "window", "wmClass", "text", "blobId"].join(",")];
  for (const r of rows) lines.push([new Date(r.timeMs).toISOString(), r.agent, r.user, r.display, r.windowTitle, r.wmClass, r.text, r.blobId].map(csvField).join(","));
  return lines.join("\r\n") + "\r\n";
}

async function videoName(run) {
  const m = run.packets[0].meta;
  const item = run.packets[0].item ?? { agent: "agent" };
  return `${await itemFolder(item)}/screens/${namePart(item.agent)}_mon${m.monitor}-${namePart(m.monitorName)}_${stamp(m.captureTimeMs)}_${run.streamID.slice(0, 8)}.webm`;
}

/**
 * The zip of the decrypted items among `items` (listing rows).
 * @returns {Promise<{blob: Blob, counts: object}>}
 */
export async function exportZip(items) {
  const open = items.filter((i) => vault.get(i.id)?.payload);
  await media.completeGroups(open);
  const z = new ZipWriter();
  const manifest = { generator: "custos dashboard", createdMs: Date.now(), files: [], counts: { frames: 0, videoFiles: 0, videoPackets: 0, videoPacketsSkipped: 0, keystrokeChunks: 0, generic: 0, notDecrypted: items.length - open.length } };
  const keyRows = [];
  const selectedVideo = new Map(); // streamID → [min, max] packetIndex selected
  for (const it of open) {
    const p = vault.get(it.id).payload;
    const base = { blobId: it.id, agent: it.agent, user: it.user ?? null, display: it.display ?? null, kind: it.kind, timeMs: it.timeMs, sequence: it.sequence };
    const folder = await itemFolder(it);
    if (p.type === "frame") {
      const name = `${folder}/screens/${namePart(it.agent)}_mon${p.meta.monitor}-${namePart(p.meta.monitorName)}_${stamp(p.meta.captureTimeMs)}.png`;
      z.add(name, p.png, it.timeMs);
      manifest.files.push({ ...base, kind: "frame", file: name, width: p.meta.width, height: p.meta.height });
      manifest.counts.frames++;
    } else if (p.type === "video") {
      const r = selectedVideo.get(p.meta.streamID) ?? [Infinity, -Infinity];
      selectedVideo.set(p.meta.streamID, [Math.min(r[0], p.meta.groupStart), Math.max(r[1], p.meta.packetIndex)]);
    } else if (p.type === "keys") {
      keyRows.push({ ...base, windowTitle: p.chunk.windowTitle, wmClass: p.chunk.wmClass, text: chunkText(p.chunk), startMs: p.chunk.startMs, endMs: p.chunk.endMs, keys: p.chunk.keys });
      manifest.counts.keystrokeChunks++;
    } else {
      const name = `${folder}/generic/${it.id}.bin`;
      z.add(name, p.bytes, it.timeMs);
      manifest.files.push({ ...base, file: name });
      manifest.counts.generic++;
    }
  }
  const packets = media.streamPackets([...selectedVideo.keys()]).filter((p) => {
    const [lo, hi] = selectedVideo.get(p.meta.streamID);
    return p.meta.packetIndex >= lo && p.meta.packetIndex <= hi;
  });
  const { runs, skipped } = videoRuns(packets);
  manifest.counts.videoPacketsSkipped = skipped;
  for (const run of runs) {
    const name = await videoName(run);
    const m = run.packets[0].meta;
    z.add(name, webmForRun(run), m.captureTimeMs);
    manifest.files.push({ kind: "video", file: name, agent: run.packets[0].item?.agent, user: run.packets[0].item?.user ?? null, streamId: run.streamID, monitor: m.monitor, codec: m.codec,
      width: m.width, height: m.height, packets: run.packets.length, firstTime: m.captureTimeMs,
      lastTime: run.packets[run.packets.length - 1].meta.captureTimeMs, blobIds: run.packets.map((p) => p.item?.id) });
    manifest.counts.videoFiles++;
    manifest.counts.videoPackets += run.packets.length;
  }
  if (keyRows.length) {
    keyRows.sort((a, b) => a.timeMs - b.timeMs);
    z.add("keystrokes.csv", keystrokesCSV(keyRows));
    z.add("keystrokes.json", JSON.stringify(keyRows, null, 1));
    manifest.files.push({ kind: "keystrokes", file: "keystrokes.csv" }, { kind: "keystrokes", file: "keystrokes.json" });
  }
  z.add("manifest.json", JSON.stringify(manifest, null, 1));
  const count = manifest.counts.frames + manifest.counts.videoPackets + manifest.counts.keystrokeChunks + manifest.counts.generic;
  api.clientReport("exported", count, `zip: ${JSON.stringify(manifest.counts)}`).catch(() => {});
  return { blob: z.finish(), counts: manifest.counts };
}

/**
 * A session's video: one WebM when it is one run, else a zip of one WebM per run.
 * @param {{meta, packet, item}[]} packets decrypted video packets
 * @returns {Promise<{blob: Blob, name: string, runs: number, skipped: number}>}
 */
export async function exportSessionVideo(packets, label) {
  const { runs, skipped } = videoRuns(packets);
  if (!runs.length) throw new Error("no video run starts at a keyframe in this session");
  let blob, name;
  if (runs.length === 1) {
    blob = new Blob([webmForRun(runs[0])], { type: "video/webm" });
    name = (await videoName(runs[0])).split("/").pop();
  } else {
    const z = new ZipWriter();
    for (const run of runs) z.add(await videoName(run), webmForRun(run), run.packets[0].meta.captureTimeMs);
    blob = z.finish();
    name = `custos-session-${namePart(label)}.zip`;
  }
  const count = runs.reduce((s, r) => s + r.packets.length, 0);
  api.clientReport("exported", count, `session video: ${runs.length} WebM file(s), ${skipped} packet(s) skipped`).catch(() => {});
  return { blob, name, runs: runs.length, skipped };
}
