// WebCodecs playback of decrypted video packets (docs/VIDEO.md "What a WebCodecs player needs"):
// one VideoDecoder timeline per stream (agent, monitor, streamID), packets in packetIndex order,
// configured from the stream's metadata (no description), each packet as one EncodedVideoChunk
// with timestamp captureTimeMs × 1000 µs, a keyframe first after every configure/reset, a gap
// ends what can be decoded until the next keyframe, a new stream needs reset + configure.

/** Packets of one stream decodable from a keyframe: each is a keyframe or follows a decodable
 *  packet with packetIndex − 1 in the same stream. Marks `p.decodable` and returns the streams
 *  (streamID → packets sorted by packetIndex). Duplicated indexes keep the first. */
export function indexStreams(packets) {
  const streams = new Map();
  for (const p of packets) {
    const id = p.meta.streamID;
    if (!streams.has(id)) streams.set(id, []);
    streams.get(id).push(p);
  }
  for (const list of streams.values()) {
    list.sort((a, b) => a.meta.packetIndex - b.meta.packetIndex);
    let prev = null;
    for (let i = 0; i < list.length; i++) {
      const p = list[i];
      if (prev && p.meta.packetIndex === prev.meta.packetIndex) { p.decodable = false; p.duplicate = true; continue; }
      p.decodable = p.meta.keyframe || (prev !== null && prev.decodable && p.meta.packetIndex === prev.meta.packetIndex + 1);
      p.position = i;
      prev = p;
    }
  }
  return streams;
}

/** The chunk for one packet (the decrypted bytes as they are: AV1 low-overhead format with the
 *  temporal delimiter, which WebCodecs expects). */
export function chunkFor(p) {
  return new EncodedVideoChunk({ type: p.meta.keyframe ? "key" : "delta", timestamp: p.meta.captureTimeMs * 1000, data: p.packet });
}

/** Packets to decode past which a seek first shows its group's keyframe (see MonitorPlayer). */
export const PROGRESSIVE_AFTER = 30;

/** Packets from the keyframe from which a seek decodes in one batch on the seek decoder (see MonitorPlayer). */
export const BATCH_AFTER = 8;

/**
 * The VideoDecoder configuration of a stream. `optimizeForLatency` (default true): each picture
 * comes out as soon as its packet is decoded (playback feeds one packet at a time); false: the
 * decoder may work on several frames at once (frame threads) and hold pictures back until
 * `flush()`, which decoded a batch of 300 packets up to 2× faster here (a seek; see docs/DASHBOARD.md).
 */
export function decoderConfig(meta, optimizeForLatency = true) {
  return { codec: meta.codec, codedWidth: meta.width, codedHeight: meta.height, optimizeForLatency };
}

/**
 * Shows one monitor's recording on a canvas at any time: `showAt(ms)` draws the picture that was
 * on screen then (the last decodable packet at or before it), decoding from its group's keyframe
 * unless the playback decoder already stands just before it in the same stream (playback feeds
 * only the new packets). A seek more than BATCH_AFTER packets from its keyframe decodes them in
 * one batch on a second decoder configured for throughput and flushes it (intermediate pictures
 * are closed unseen); the playback decoder is then positioned again by the next forward step.
 * Calls are serialized; a newer call supersedes queued ones.
 */
export class MonitorPlayer {
  /**
   * @param {HTMLCanvasElement|OffscreenCanvas} canvas resized to each stream's picture size
   * @param {{batchAfter?: number}} options packets from the keyframe from which a seek is one batch (default BATCH_AFTER)
   */
  constructor(canvas, { batchAfter = BATCH_AFTER } = {}) {
    this.canvas = canvas;
    this.batchAfter = batchAfter;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.packets = [];
    this.streams = new Map();
    this.decoder = null; // playback: optimizeForLatency
    this.seeker = null; // seeks: throughput, flushed per seek
    this.state = null; // {streamID, index} last packet fed to the configured playback decoder
    this.pending = null; // {timestamp, resolve}
    this.chain = Promise.resolve();
    this.generation = 0;
    this.shown = null;
    this.stats = { decoded: 0, resets: 0, flushes: 0, batches: 0 };
    /** Called after each picture drawn: {timestampUs, exact} (exact false: the keyframe shown first). */
    this.onDraw = null;
  }

  /** @param {{meta, packet: Uint8Array}[]} packets video payloads (payload.js) of one monitor, any streams */
  setPackets(packets) {
    this.packets = packets.slice().sort((a, b) => a.meta.captureTimeMs - b.meta.captureTimeMs || a.meta.packetIndex - b.meta.packetIndex);
    this.streams = indexStreams(this.packets);
    this.state = null;
    this.shown = null;
  }

  /** Time range [first, last] of the packets, ms since the epoch (null if none). */
  get range() {
    return this.packets.length ? [this.packets[0].meta.captureTimeMs, this.packets[this.packets.length - 1].meta.captureTimeMs] : null;
  }

  /** The last decodable packet shown at or before `timeMs` (binary search, then back over undecodable ones). */
  packetAt(timeMs) {
    let lo = 0, hi = this.packets.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.packets[mid].meta.captureTimeMs <= timeMs) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    for (let i = found; i >= 0; i--) if (this.packets[i].decodable) return this.packets[i];
    return null;
  }

  /**
   * Draws the picture at `timeMs`.
   * @returns {Promise<{timeMs: number, streamID: string, packetIndex: number}|null>} what is shown
   *   (null: nothing recorded that decodes at or before it; superseded calls also give null)
   */
  showAt(timeMs) {
    const generation = ++this.generation;
    // A seek while another is still decoding: drop that one's queued chunks (scrubbing stays responsive).
    if (this.pending) this.#abort();
    const run = async () => {
      if (generation !== this.generation) return null;
      return this.#show(timeMs);
    };
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => null);
    return result;
  }

  async #show(timeMs) {
    const target = this.packetAt(timeMs);
    if (!target) {
      this.shown = null;
      return null;
    }
    const id = target.meta.streamID;
    if (this.shown && this.shown.packet === target) return this.shown.info;
    const list = this.streams.get(id);
    let from;
    if (this.state && this.decoder && this.decoder.state === "configured" && this.state.streamID === id &&
        this.state.position < target.position && this.#contiguous(list, this.state.position, target.position)) {
      from = this.state.position + 1;
    } else {
      let k = target.position;
      while (!list[k].meta.keyframe) k--;
      from = k;
      if (target.position - k >= this.batchAfter) return this.#batch(list, k, target);
      this.#reset(target.meta);
    }
    // A long way from the keyframe: the keyframe's picture is drawn as soon as it is decoded,
    // then the exact one (a seek shows something at once; the exact picture follows).
    const progressive = target.position - from > PROGRESSIVE_AFTER;
    const pending = { timestamp: target.meta.captureTimeMs * 1000, aborted: false, progressive, drewFirst: false };
    const shown = new Promise((resolve, reject) => { pending.resolve = resolve; pending.reject = reject; });
    this.pending = pending;
    for (let i = from; i <= target.position; i++) {
      this.decoder.decode(chunkFor(list[i]));
      this.stats.decoded++;
    }
    this.state = { streamID: id, position: target.position };
    // Chromium's AV1 decoder (optimizeForLatency) outputs each frame without a flush; a flush
    // would make the next chunk need to be a keyframe, so it is only the fallback when the queue
    // has drained and the target's picture is still not out after 250 ms.
    const timer = setInterval(() => {
      if (this.pending !== pending || !this.decoder || this.decoder.decodeQueueSize > 0) return;
      pending.idleTicks = (pending.idleTicks ?? 0) + 1;
      if (pending.idleTicks < 5) return;
      clearInterval(timer);
      this.state = null;
      this.stats.flushes++;
      this.decoder.flush().catch(() => {}).then(() => {
        if (this.pending === pending) { this.pending = null; pending.reject(new Error(`no picture came out for packet ${target.meta.packetIndex} of stream ${id}`)); }
      });
    }, 50);
    try {
      await shown;
    } finally {
      clearInterval(timer);
    }
    if (pending.aborted) return null;
    const info = { timeMs: target.meta.captureTimeMs, streamID: id, packetIndex: target.meta.packetIndex };
    this.shown = { packet: target, info };
    return info;
  }

  /**
   * A seek: packets list[from..target] (from a keyframe) decoded in one batch on the seek decoder
   * (throughput configuration), then flushed; only the target's picture (and, far from the
   * keyframe, the keyframe's first) is drawn. The playback decoder is left unpositioned.
   */
  async #batch(list, from, target) {
    this.state = null;
    if (!this.seeker || this.seeker.state === "closed") {
      this.seeker = new VideoDecoder({
        output: (frame) => this.#output(frame),
        error: (e) => {
          this.shown = null;
          if (this.pending) { const p = this.pending; this.pending = null; p.reject(new Error(`video decoder: ${e.message}`)); }
        },
      });
    } else if (this.seeker.state === "configured") {
      this.seeker.reset();
    }
    this.seeker.configure(decoderConfig(target.meta, false));
    this.stats.batches++;
    const progressive = target.position - from > PROGRESSIVE_AFTER;
    const pending = { timestamp: target.meta.captureTimeMs * 1000, aborted: false, progressive, drewFirst: false };
    const shown = new Promise((resolve, reject) => { pending.resolve = resolve; pending.reject = reject; });
    this.pending = pending;
    const seeker = this.seeker;
    for (let i = from; i <= target.position; i++) {
      seeker.decode(chunkFor(list[i]));
      this.stats.decoded++;
    }
    // The flush brings out the pictures the decoder holds back, the target's last; a reset (a
    // newer seek) rejects it, which the aborted flag tells apart.
    const flushed = seeker.flush().then(() => {
      if (this.pending === pending) {
        this.pending = null;
        pending.reject(new Error(`no picture came out for packet ${target.meta.packetIndex} of stream ${target.meta.streamID}`));
      }
    }, () => {});
    await shown;
    await flushed;
    if (pending.aborted) return null;
    const info = { timeMs: target.meta.captureTimeMs, streamID: target.meta.streamID, packetIndex: target.meta.packetIndex };
    this.shown = { packet: target, info };
    return info;
  }

  /** Drops the decode in flight (its caller gets null). */
  #abort() {
    const p = this.pending;
    this.pending = null;
    p.aborted = true;
    p.resolve();
    this.state = null;
    this.shown = null;
    if (this.decoder && this.decoder.state === "configured") this.decoder.reset();
    if (this.seeker && this.seeker.state === "configured") this.seeker.reset();
  }

  #contiguous(list, a, b) {
    for (let i = a + 1; i <= b; i++) if (list[i].meta.packetIndex !== list[i - 1].meta.packetIndex + 1 || !list[i].decodable) return false;
    return true;
  }

  #reset(meta) {
    this.stats.resets++;
    if (!this.decoder || this.decoder.state === "closed") {
      this.decoder = new VideoDecoder({
        output: (frame) => this.#output(frame),
        error: (e) => {
          this.state = null;
          this.shown = null;
          if (this.pending) { const p = this.pending; this.pending = null; p.reject(new Error(`video decoder: ${e.message}`)); }
        },
      });
    } else {
      this.decoder.reset();
    }
    this.decoder.configure(decoderConfig(meta));
  }

  #output(frame) {
    try {
      const p = this.pending;
      if (!p) return;
      const target = frame.timestamp === p.timestamp;
      if (target || (p.progressive && !p.drewFirst)) {
        const w = frame.displayWidth, h = frame.displayHeight;
        if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
        this.ctx.drawImage(frame, 0, 0, w, h);
        p.drewFirst = true;
        if (this.onDraw) this.onDraw({ timestampUs: frame.timestamp, exact: target });
      }
      if (target) {
        this.pending = null;
        p.resolve();
      }
    } finally {
      frame.close();
    }
  }

  close() {
    this.generation++;
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = null;
    if (this.seeker && this.seeker.state !== "closed") this.seeker.close();
    this.seeker = null;
    this.state = null;
    if (this.pending) this.#abort();
  }
}
