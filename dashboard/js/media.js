// Pictures of decrypted screen captures: PNG frames as they are, video packets decoded by
// WebCodecs from their group's keyframe (docs/VIDEO.md). A packet's earlier group members may lie
// before what a page listed: `packetsBefore` looks back through the agent's screen captures
// (cursor paging, newest first) until the keyframe, at most an hour (keyframe-interval-seconds ≤ 3,600).

import { api } from "./api.js";
import { MonitorPlayer } from "./player.js";
import * as vault from "./vault.js";

const LOOKBACK_MS = 3600_000;
const streams = new Map(); // streamID → Map(packetIndex → {meta, packet, item})

/** Adds the video packets among `items` (decrypted) to the stream index. */
export function index(items) {
  for (const it of items) {
    const d = vault.get(it.id);
    if (!d || !d.payload || d.payload.type !== "video") continue;
    const m = d.payload.meta;
    if (!streams.has(m.streamID)) streams.set(m.streamID, new Map());
    const s = streams.get(m.streamID);
    if (!s.has(m.packetIndex)) s.set(m.packetIndex, { meta: m, packet: d.payload.packet, item: it });
  }
}

/** Drops every packet (on lock). */
export function forget() {
  streams.clear();
  for (const p of players.values()) p.close();
  players.clear();
}
vault.subscribe((e) => { if (e.type === "lock") forget(); });

/** The packets of `meta`'s group from its keyframe to it, or null while some are missing. */
function group(meta) {
  const s = streams.get(meta.streamID);
  if (!s) return null;
  const out = [];
  for (let i = meta.groupStart; i <= meta.packetIndex; i++) {
    const p = s.get(i);
    if (!p) return null;
    out.push(p);
  }
  return out;
}

/**
 * Makes sure every packet of the groups of `items`' video packets is decrypted, fetching earlier
 * screen captures of the same agent when needed.
 * @returns {Promise<number>} packets looked up before the listed ones
 */
export async function completeGroups(items) {
  index(items);
  let fetched = 0;
  const need = new Map(); // agent → earliest time that lacks its group
  for (const it of items) {
    const d = vault.get(it.id);
    if (d?.payload?.type === "video" && !group(d.payload.meta)) {
      need.set(it.agent, Math.min(need.get(it.agent) ?? Infinity, it.timeMs));
    }
  }
  for (const [agent, until] of need) {
    let cursor;
    for (;;) {
      const page = await api.captures({ agent, kind: "screen", until, since: until - LOOKBACK_MS, order: "desc", limit: 200, after: cursor });
      await vault.open(page.items);
      index(page.items);
      if (!page.items.some((i) => vault.get(i.id)?.payload)) break; // nothing here opens (locked, or failures)
      fetched += page.items.length;
      const stillMissing = items.some((it) => {
        const d = vault.get(it.id);
        return it.agent === agent && d?.payload?.type === "video" && !group(d.payload.meta);
      });
      if (!stillMissing || page.next === null || page.items.length === 0) break;
      cursor = page.next;
    }
  }
  return fetched;
}

const players = new Map(); // streamID → MonitorPlayer on an offscreen canvas

/**
 * Draws the picture of one decrypted screen item onto `canvas` at the frame's own pixel size.
 * @returns {Promise<boolean>} false when it cannot be shown (a video packet whose group is incomplete)
 */
export async function drawItem(item, canvas) {
  const d = vault.get(item.id);
  if (!d?.payload) return false;
  const p = d.payload;
  if (p.type === "frame") {
    const bitmap = await createImageBitmap(new Blob([p.png], { type: "image/png" }));
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    return true;
  }
  if (p.type !== "video") return false;
  const packets = group(p.meta);
  if (!packets) return false;
  let player = players.get(p.meta.streamID);
  if (!player) {
    if (players.size >= 4) { const [k, old] = players.entries().next().value; old.close(); players.delete(k); }
    player = new MonitorPlayer(new OffscreenCanvas(p.meta.width, p.meta.height));
    players.set(p.meta.streamID, player);
  }
  const all = [...streams.get(p.meta.streamID).values()];
  if (player.packets.length !== all.length) player.setPackets(all);
  const shown = await player.showAt(p.meta.captureTimeMs);
  if (!shown || shown.packetIndex !== p.meta.packetIndex) return false;
  canvas.width = player.canvas.width;
  canvas.height = player.canvas.height;
  canvas.getContext("2d").drawImage(player.canvas, 0, 0);
  return true;
}

/** Sorts screen items so that each stream's packets come in packetIndex order (decoding moves forward). */
export function drawOrder(items) {
  const key = (it) => {
    const p = vault.get(it.id)?.payload;
    return p?.type === "video" ? [p.meta.streamID, p.meta.packetIndex] : ["", it.timeMs];
  };
  return items.slice().sort((a, b) => {
    const ka = key(a), kb = key(b);
    return ka[0] < kb[0] ? -1 : ka[0] > kb[0] ? 1 : ka[1] - kb[1];
  });
}

/** Every decrypted video packet known for `streamIDs` (for exports). */
export function streamPackets(streamIDs) {
  const out = [];
  for (const id of streamIDs) for (const p of streams.get(id)?.values() ?? []) out.push(p);
  return out;
}
