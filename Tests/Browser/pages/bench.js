// Dashboard benchmark (Benchmarks/dashboard.sh): medians of decrypt+show of one 1920x1080 frame
// and of seeks in a one-hour session, with the dashboard's own modules.
import { KeyRing } from "/js/envelope.js";
import { isBlobRecord, splitRecords } from "/js/format.js";
import { unlockKey } from "/js/keys.js";
import { decodePayload } from "/js/payload.js";
import { MonitorPlayer } from "/js/player.js";

const F = "/fixtures/";
const cfg = await (await fetch(F + "bench.json")).json();
const lines = [];
const median = (a) => { const s = a.slice().sort((x, y) => x - y); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const fmt = (a) => `median ${median(a).toFixed(1)} ms (min ${Math.min(...a).toFixed(1)}, max ${Math.max(...a).toFixed(1)}, n=${a.length})`;
const bytes = async (p) => new Uint8Array(await (await fetch(F + p)).arrayBuffer());

// A deterministic PRNG (mulberry32) so runs seek to the same times.
function rng(seed) { return () => { seed |= 0; seed = (seed + 0x6d2b79f5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed); t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296; }; }

try {
  lines.push(`browser: ${navigator.userAgent}`);
  const pem = await (await fetch(F + cfg.key)).text();
  let t = performance.now();
  const key = await unlockKey(pem, cfg.passphrase);
  lines.push(`unlock keypair.pem (PBKDF2 2048 iterations + RSA import): ${(performance.now() - t).toFixed(1)} ms (once)`);

  const video = splitRecords(await bytes(cfg.video));
  const dekRecord = video.find((r) => r.type === 1).bytes;
  const blobs = video.filter((r) => isBlobRecord(r.type)).map((r) => r.bytes);
  // Find the keyframe blob (packet 0) with one ring.
  const ring0 = new KeyRing(key.privateKey, key.kekID);
  await ring0.addDEKRecord(dekRecord);
  const opened = [];
  t = performance.now();
  for (const b of blobs) {
    const { header, plaintext } = await ring0.open(b);
    if (header.kind === "screen") opened.push({ blob: b, ...decodePayload(header.kind, plaintext) });
  }
  const decryptAll = performance.now() - t;
  const packets = opened.filter((p) => p.type === "video").sort((a, b) => a.meta.packetIndex - b.meta.packetIndex);
  const key0 = packets[0];
  if (!key0.meta.keyframe || key0.meta.width !== 1920) throw new Error(`first packet ${JSON.stringify(key0.meta)} is not a 1920x1080 keyframe`);
  lines.push(`recording: ${packets.length} packets 1920x1080 ${key0.meta.codec}, keyframe ${key0.packet.length} bytes, inter packets median ${median(packets.slice(1).map((p) => p.packet.length))} bytes`);
  lines.push(`decrypt ${blobs.length} sealed blobs of the recording (open + payload decode, DEK already open): ${decryptAll.toFixed(1)} ms`);

  const canvas = document.createElement("canvas");
  document.body.append(canvas);
  const readPixel = (c) => c.getContext("2d").getImageData(960, 540, 1, 1).data[0];
  async function showOne(ring, withDEK) {
    const start = performance.now();
    if (withDEK) await ring.addDEKRecord(dekRecord);
    const { header, plaintext } = await ring.open(key0.blob);
    const p = decodePayload(header.kind, plaintext);
    const player = new MonitorPlayer(canvas);
    player.setPackets([p]);
    await player.showAt(p.meta.captureTimeMs);
    readPixel(canvas);
    const ms = performance.now() - start;
    player.close();
    return ms;
  }
  await showOne(new KeyRing(key.privateKey, key.kekID), true); // warm-up
  const firstFrame = [], nextFrame = [];
  for (let i = 0; i < cfg.runs; i++) firstFrame.push(await showOne(new KeyRing(key.privateKey, key.kekID), true));
  for (let i = 0; i < cfg.runs; i++) nextFrame.push(await showOne(ring0, false));
  lines.push(`decrypt + show one 1920x1080 video keyframe, DEK unwrap included (a new agent session): ${fmt(firstFrame)}`);
  lines.push(`decrypt + show one 1920x1080 video keyframe, DEK already open: ${fmt(nextFrame)}   (goal <= 50 ms)`);

  const png = splitRecords(await bytes(cfg.png));
  const ringP = new KeyRing(key.privateKey, key.kekID);
  await ringP.addDEKRecord(png.find((r) => r.type === 1).bytes);
  const pngBlob = png.filter((r) => isBlobRecord(r.type)).map((r) => r.bytes).find((b) => b[75] === 1);
  const pngFrame = [];
  let pngSize = 0;
  for (let i = 0; i < cfg.runs + 1; i++) {
    const start = performance.now();
    const { header, plaintext } = await ringP.open(pngBlob);
    const p = decodePayload(header.kind, plaintext);
    pngSize = p.png.length;
    const bitmap = await createImageBitmap(new Blob([p.png], { type: "image/png" }));
    canvas.width = bitmap.width; canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    readPixel(canvas);
    if (i > 0) pngFrame.push(performance.now() - start); // first run is the warm-up
  }
  lines.push(`decrypt + show one 1920x1080 PNG frame (screen-format=png, ${pngSize} bytes): ${fmt(pngFrame)}`);

  // One hour at 1 frame/s with a keyframe every `gopLength` s: groups of that many recorded packets,
  // re-timed 1 s apart, each group its own stream.
  async function hourSeeks(gopLength) {
    const gop = packets.slice(0, Math.min(gopLength, packets.length));
    if (gop.length < gopLength) lines.push(`NOTE: only ${gop.length} packets were recorded: the hour has a keyframe every ${gop.length} s instead of ${gopLength} s, so seeks cost less than they would`);
    const groups = Math.ceil(3600 / gop.length);
    const t0 = Date.UTC(2026, 0, 1);
    const hour = [];
    for (let s = 0; s < groups; s++) {
      const streamID = s.toString(16).padStart(32, "0");
      gop.forEach((p, i) => hour.push({ meta: { ...p.meta, streamID, captureTimeMs: t0 + (s * gop.length + i) * 1000 }, packet: p.packet }));
    }
    // Two players, the same seeks interleaved (so both see the same load): the default (a far
    // seek is one batch on the throughput decoder, flushed) and the playback decoder alone
    // (optimizeForLatency, every packet's picture out as it is decoded).
    const variants = [["batch (default)", {}], ["latency decoder only", { batchAfter: Infinity }]].map(([name, options]) => {
      const player = new MonitorPlayer(canvas, options);
      const v = { name, player, firstDraw: null, seeks: [], firsts: [], worst: [] };
      player.onDraw = () => { if (v.firstDraw === null) v.firstDraw = performance.now(); };
      player.setPackets(hour);
      return v;
    });
    for (const v of variants) await v.player.showAt(t0 + 10_000); // warm-up
    const random = rng(15);
    for (let i = 0; i < cfg.runs * 2; i++) {
      const target = t0 + Math.floor(random() * 3600) * 1000;
      for (const v of (i % 2 ? variants.slice().reverse() : variants)) {
        await v.player.showAt(t0 + (Math.floor(random() * groups) * gop.length) * 1000); // stand elsewhere first
        v.firstDraw = null;
        const start = performance.now();
        const shown = await v.player.showAt(target);
        readPixel(canvas);
        v.seeks.push(performance.now() - start);
        v.firsts.push(v.firstDraw === null ? v.seeks[v.seeks.length - 1] : v.firstDraw - start);
        if (!shown) throw new Error(`nothing shown at ${target}`);
      }
    }
    for (let i = 0; i < 5; i++) {
      for (const v of variants) {
        await v.player.showAt(t0 + (i * gop.length) * 1000); // stand at a keyframe of another group
        const start = performance.now();
        await v.player.showAt(t0 + ((i + 5) * gop.length + gop.length - 1) * 1000); // the last packet of a group: the longest decode
        readPixel(canvas);
        v.worst.push(performance.now() - start);
      }
    }
    for (const v of variants) v.player.close();
    const label = `keyframe every ${gop.length} s`;
    lines.push(`one hour, ${label}: ${hour.length} packets in ${groups} groups, ${(hour.reduce((s, p) => s + p.packet.length, 0) / 1e6).toFixed(2)} MB of packets`);
    for (const v of variants) {
      lines.push(` ${v.name}:`);
      lines.push(`  seek to a random time, exact picture: ${fmt(v.seeks)}   (goal <= 300 ms)`);
      lines.push(`  seek to a random time, first picture (the group's keyframe while the rest decodes): ${fmt(v.firsts)}`);
      lines.push(`  seek to the last packet of a group (${gop.length} packets to decode, the worst case): ${fmt(v.worst)}; ${(median(v.worst) / gop.length).toFixed(2)} ms per packet`);
    }
    const [b, l] = variants;
    lines.push(`  ratio batch/latency-only, medians: random seek ${(median(b.seeks) / median(l.seeks)).toFixed(2)}, worst case ${(median(b.worst) / median(l.worst)).toFixed(2)}`);
  }
  await hourSeeks(300);
  await hourSeeks(60);
  document.getElementById("result").textContent = JSON.stringify({ lines });
} catch (e) {
  document.getElementById("result").textContent = JSON.stringify({ error: `${e.name}: ${e.message}`, lines });
}
document.body.dataset.state = "done";
