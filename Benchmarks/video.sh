#!/usr/bin/env bash
# Bytes per recorded hour: the agent's AV1 encoder (custos-bench-video) against
# `libx264 -preset veryfast -crf 23` and against PNG per changed frame (ffmpeg's png encoder at
# level 1 with the SUB filter, close to today's PNG path), on the SAME raw frames grabbed from a
# real 1920x1080x24 Xvfb at 1 frame/s while xdotool types (issue 13's two scenes, Benchmarks/scenes.sh):
#   desktop:  patterned root, xclock ticking, xlogo, an xterm being typed into
#   document: light root, a white xterm being typed into
# The codec candidates of issue 13 go through ffmpeg on the same frames too (libvpx-vp9
# real-time, SVT-AV1, libaom real-time with tune-content=screen).
# For each scene: bytes and MB/h of each, ratios to x264, our encode CPU ms/frame (median),
# SSIM/PSNR of our decoded frames against the lossless grab (libyuv), the encoder's peak RSS.
# Usage: Benchmarks/video.sh [seconds per scene] [cq-level]    (default 60 s, cq 30)
# VIDEO_BENCH_BIN=path uses that binary instead of the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
. Benchmarks/scenes.sh
SECONDS_RUN=${1:-60}
CQ=${2:-30}
if [ -z "${VIDEO_BENCH_BIN:-}" ]; then
  swift build "${RELEASE_FLAGS[@]}" --product custos-bench-video >/dev/null
  VIDEO_BENCH_BIN="$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-video"
fi
WORK=$(mktemp -d); chmod 700 "$WORK"
pids=()
cleanup() { stop_children; rm -rf "$WORK"; }
trap cleanup EXIT
W=1920; H=1080

scene() {  # scene NAME: starts Xvfb and the scene (Benchmarks/scenes.sh), records raw frames to $WORK/NAME.bgr0
  local name=$1
  start_display "$name"
  start_scene "$name"
  start_typing $((SECONDS_RUN + 2))
  ffmpeg -v error -y -f x11grab -framerate 1 -video_size ${W}x${H} -i "$DISPLAY" -t "$SECONDS_RUN" \
    -f rawvideo -pix_fmt bgr0 "$WORK/$name.bgr0"
  stop_children
}

measure() {  # measure NAME: prints the scene's table rows
  local name=$1 raw="$WORK/$1.bgr0"
  local frames=$(( $(stat -c %s "$raw") / (W * H * 4) ))
  # Each candidate through ffmpeg on the same frames, one thread: bytes, CPU ms/frame (process
  # user+sys over all frames, decoding the raw input included), peak RSS.
  cand() {  # cand LABEL EXT ffmpeg-encoder-args...
    local label=$1 ext=$2; shift 2
    /usr/bin/time -f '%U %S %M' -o "$WORK/t" ffmpeg -v error -y -threads 1 -f rawvideo -pix_fmt bgr0 -video_size ${W}x${H} \
      -framerate 1 -i "$raw" -pix_fmt yuv420p "$@" "$WORK/$name.$ext"
    printf '%s %s %s\n' "$label" "$(stat -c %s "$WORK/$name.$ext")" "$(awk -v n="$frames" '{printf "%.1f %d", ($1+$2)*1000/n, $3/1024}' "$WORK/t")"
  } 
  cand x264 mp4 -c:v libx264 -preset veryfast -crf 23 -threads 1 > "$WORK/cands-$name"
  cand vp9-rt webm -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -crf 35 -b:v 0 -lag-in-frames 0 -row-mt 0 -threads 1 >> "$WORK/cands-$name"
  cand svt-av1 mkv -c:v libsvtav1 -preset 10 -crf 35 -svtav1-params lp=1 2>/dev/null >> "$WORK/cands-$name"
  cand aom-rt8-screen ivf -c:v libaom-av1 -usage realtime -cpu-used 8 -crf 30 -lag-in-frames 0 -tune-content screen -threads 1 >> "$WORK/cands-$name"
  local x264; x264=$(awk '$1 == "x264" {print $2}' "$WORK/cands-$name")
  mkdir -p "$WORK/png-$name"
  ffmpeg -v error -y -f rawvideo -pix_fmt bgr0 -video_size ${W}x${H} -framerate 1 -i "$raw" \
    -c:v png -compression_level 1 -pred sub -pix_fmt rgb24 "$WORK/png-$name/%05d.png"
  # Today's path encodes only frames whose pixels changed: sum the PNGs of changed frames.
  local png; png=$(python3 - "$raw" "$WORK/png-$name" $((W * H * 4)) <<'PY'
import hashlib, os, sys
raw, pngdir, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
total, prev = 0, None
with open(raw, 'rb') as f:
    i = 1
    while True:
        b = f.read(size)
        if len(b) < size: break
        h = hashlib.sha256(b).digest()
        if h != prev: total += os.path.getsize(os.path.join(pngdir, '%05d.png' % i))
        prev, i = h, i + 1
print(total)
PY
)
  local ours; ours=$(/usr/bin/time -f 'wall=%e' "$VIDEO_BENCH_BIN" $W $H "$raw" "$CQ" 60 2>"$WORK/time-$name")
  local bytes; bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$ours")
  python3 - "$name" "$frames" "$bytes" "$x264" "$png" "$ours" "$CQ" "$WORK/cands-$name" <<'PY'
import sys
name, frames, ours, x264, png, line, cq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
cands = [l.split() for l in open(sys.argv[8]) if l.strip()]
kv = dict(p.split('=') for p in line.split())
per_h = lambda b: b / frames * 3600 / 1e6  # MB per hour at 1 frame/s
print(f"{name}: {frames} frames of 1920x1080 at 1 frame/s")
print(f"  Custos AV1 (cq {cq:>2})     : {ours:>11,} B  {per_h(ours):8.1f} MB/h  ratio to x264 {ours / x264:.2f}")
for label, b, ms, rss in cands:
    b = int(b)
    print(f"  ffmpeg {label:<16}: {b:>11,} B  {per_h(b):8.1f} MB/h  ratio to x264 {b / x264:.2f}  ({ms} ms CPU/frame, {rss} MiB peak, ffmpeg process)")
print(f"  PNG per changed frame  : {png:>11,} B  {per_h(png):8.1f} MB/h  ratio to x264 {png / x264:.1f}, to Custos AV1 {png / max(ours, 1):.0f}")
print(f"  AV1 encode CPU per frame (median): {kv['cpu_ms_median']} ms; keyframes {kv['keyframes']}; "
      f"SSIM mean {kv['ssim_mean']} (min {kv['ssim_min']}); PSNR mean {kv['psnr_mean']} dB; encoder peak RSS {int(kv['rss_kib']) // 1024} MiB")
PY
}

for s in desktop document; do scene $s; measure $s; done
