#!/usr/bin/env bash
# Bytes per recorded hour, measured in the agent (issue 13): for each of issue 13's two scenes
# (Benchmarks/scenes.sh) on one real 1920x1080x24 Xvfb, three recorders run AT THE SAME TIME on
# the same display while xdotool types through XTEST:
#   - the release custos-agent, screen-format=video (AV1), screen-interval-ms=1000, E2EE on with a
#     real openssl RSA KEK, spooling only (no server-url);
#   - the same binary with screen-format=png, screen-interval-ms=1000, in a second spool;
#   - ffmpeg -f x11grab -framerate 1 -c:v libx264 -preset veryfast -crf 23 (x264's defaults
#     otherwise: one keyframe per 250 frames).
# Per scene: sealed screen bytes and records in each spool (`custos-agent status`), x264 file
# bytes, MB per recorded hour (bytes over the span from the first to the last frame, plus one
# interval), ratios to x264, each agent's CPU (% of one core, from its start to its stop) and
# peak RSS (VmHWM), and the AV1 packet sizes (keyframes and inter packets), read by decrypting
# the video spool with the run's private key (python3-cryptography; format in docs/FORMAT.md
# and docs/CAPTURE.md "Video packet payload"). Ends with a markdown table (docs/VIDEO.md).
# The two agents do not interfere: each has its own X connections, DAMAGE object and spool.
# Usage: Benchmarks/bytes-per-hour.sh [seconds per scene]   (default 120)
# AGENT_BENCH_BIN=path uses that custos-agent instead of the release build;
# KEYFRAME_SECONDS=N sets the video agent's keyframe-interval-seconds (default: the agent's, 300).
set -euo pipefail
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
. Benchmarks/scenes.sh
SECONDS_RUN=${1:-120}
[ "$SECONDS_RUN" -ge 10 ] 2>/dev/null || { echo "usage: $0 [seconds per scene, at least 10]" >&2; exit 2; }
if [ -z "${AGENT_BENCH_BIN:-}" ]; then
  swift build "${RELEASE_FLAGS[@]}" --product custos-agent >/dev/null
  AGENT_BENCH_BIN="$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-agent"
fi
python3 -c 'import cryptography' 2>/dev/null \
  || { echo "$0: needs python3-cryptography to read AV1 packet sizes from the spool (make deps)" >&2; exit 1; }
WORK=$(mktemp -d); chmod 700 "$WORK"
pids=()
cleanup() { stop_children; rm -rf "$WORK"; }
trap cleanup EXIT
HZ=$(getconf CLK_TCK)
openssl genrsa -out "$WORK/k.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/k.pem" -pubout -out "$WORK/kek.pem" 2>/dev/null
echo "load before: $(uptime)"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_scene NAME: runs the three recorders on a fresh display, writes $WORK/NAME/result.json.
run_scene() {
  local name=$1 dir="$WORK/$1" fmt
  mkdir -m 700 "$dir"
  start_display "$name"
  start_scene "$name"
  for fmt in video png; do
    { [ "$fmt" = video ] && [ -n "${KEYFRAME_SECONDS:-}" ] && echo "keyframe-interval-seconds=$KEYFRAME_SECONDS"
      cat <<CFG
enable-encryption=1
kek-file=$WORK/kek.pem
display=$DISPLAY
screen-format=$fmt
screen-interval-ms=1000
keystroke-idle-ms=2000
spool-max-mb=16384
spool-dir=$dir/spool-$fmt
CFG
    } > "$dir/$fmt.cfg"
  done
  start_typing $((SECONDS_RUN + 10))
  sleep 1
  local s0; s0=$(date +%s.%N)
  "$AGENT_BENCH_BIN" --config "$dir/video.cfg" 2>"$dir/video.log" & local av=$!; pids+=($av)
  "$AGENT_BENCH_BIN" --config "$dir/png.cfg" 2>"$dir/png.log" & local ap=$!; pids+=($ap)
  /usr/bin/time -f '%U %S %M %e' -o "$dir/x264.time" \
    ffmpeg -v error -y -f x11grab -framerate 1 -video_size 1920x1080 -i "$DISPLAY" -t "$SECONDS_RUN" \
      -c:v libx264 -preset veryfast -crf 23 "$dir/x264.mp4" & local ff=$!; pids+=($ff)
  sleep "$SECONDS_RUN"
  local p
  for p in $av $ap; do
    kill -0 "$p" 2>/dev/null || { echo "$0: custos-agent ($name) exited early; its log:" >&2; cat "$dir"/*.log >&2; return 1; }
  done
  local tv tp s1 hv hp
  tv=$(ticks $av); tp=$(ticks $ap); s1=$(date +%s.%N)
  hv=$(awk '/VmHWM/ {print $2}' /proc/$av/status); hp=$(awk '/VmHWM/ {print $2}' /proc/$ap/status)
  kill -TERM $av $ap
  wait $av || { echo "$0: the video agent ($name) failed; its log:" >&2; cat "$dir/video.log" >&2; return 1; }
  wait $ap || { echo "$0: the png agent ($name) failed; its log:" >&2; cat "$dir/png.log" >&2; return 1; }
  wait $ff || { echo "$0: ffmpeg x11grab/libx264 ($name) failed" >&2; return 1; }
  forget_children $av $ap $ff
  "$AGENT_BENCH_BIN" status --config "$dir/video.cfg" > "$dir/video.status"
  "$AGENT_BENCH_BIN" status --config "$dir/png.cfg" > "$dir/png.status"
  local frames; frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets \
    -of csv=p=0 "$dir/x264.mp4")
  ffprobe -v error -select_streams v:0 -show_entries packet=size,flags -of csv=p=0 "$dir/x264.mp4" > "$dir/x264.packets"
  python3 - "$name" "$dir" "$WORK/k.pem" "$SECONDS_RUN" "$HZ" "$s0" "$s1" "$tv" "$tp" "$hv" "$hp" "$frames" <<'PY'
import json, os, re, sqlite3, statistics, struct, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

name, d, keypath = sys.argv[1:4]
seconds, hz, s0, s1 = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
ticks = {'video': int(sys.argv[8]), 'png': int(sys.argv[9])}
hwm = {'video': int(sys.argv[10]), 'png': int(sys.argv[11])}
x264_frames = int(sys.argv[12])
key = serialization.load_pem_private_key(open(keypath, 'rb').read(), None)
oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

def status(fmt):
    """Screen records and bytes from `custos-agent status` ("spool by kind: ... screen N (B bytes)")."""
    text = open(f'{d}/{fmt}.status').read()
    m = re.search(r'^spool by kind:.*\bscreen (\d+) \((\d+) bytes\)', text, re.M)
    if not m: sys.exit(f'{fmt} status: no "spool by kind: ... screen N (B bytes)" line:\n{text}')
    ev = re.search(r'^evictions:\s+(\d+) records', text, re.M)
    dr = re.search(r'^dropped:\s+(.*)$', text, re.M)
    return int(m[1]), int(m[2]), int(ev[1]) if ev else -1, dr[1] if dr else '?'

def rows(fmt):
    con = sqlite3.connect(f'file:{d}/spool-{fmt}/spool.db?mode=ro', uri=True)
    return con.execute('SELECT kind, capture_ms, payload FROM record ORDER BY seq').fetchall()

def packets(records):
    """Opens every sealed screen blob (docs/FORMAT.md) and splits its CVPK payload (docs/CAPTURE.md)."""
    deks, out = {}, []
    for kind, _, rec in records:
        if kind == 'dek':
            n = rec[67]; w = struct.unpack('>H', rec[68 + n:70 + n])[0]
            deks[bytes(rec[11:27])] = key.decrypt(bytes(rec[70 + n:70 + n + w]), oaep)
    for kind, _, rec in records:
        if kind != 'screen': continue
        n = rec[92]
        okm = HKDF(hashes.SHA256(), 44, salt=bytes(rec[11:27]), info=b'CSTS v1 blob key+nonce').derive(deks[bytes(rec[59:75])])
        pt = AESGCM(okm[:32]).decrypt(okm[32:], bytes(rec[93 + n:]), bytes(rec[:93 + n]))
        if pt[:4] != b'CVPK': sys.exit(f'{name}: a video spool screen blob is not a CVPK packet')
        m = struct.unpack('>I', pt[5:9])[0]
        meta = json.loads(pt[9:9 + m])
        out.append((meta, len(pt) - 9 - m, len(rec)))
    return out

res = {'scene': name, 'seconds': seconds, 'agents': {}}
for fmt in ('video', 'png'):
    count, nbytes, evicted, dropped = status(fmt)
    recs = rows(fmt)
    times = [t for k, t, _ in recs if k == 'screen']
    span = (max(times) - min(times)) / 1000 + 1 if times else 0
    a = {'records': count, 'bytes': nbytes, 'span_s': span, 'evicted': evicted, 'dropped': dropped,
         'mb_per_h': nbytes / span * 3600 / 1e6 if span else 0,
         'cpu_pct': 100 * ticks[fmt] / hz / (s1 - s0), 'rss_mib': hwm[fmt] / 1024}
    if fmt == 'video':
        p = packets(recs)
        key_sizes = [s for m, s, _ in p if m['keyframe']]
        inter = sorted(s for m, s, _ in p if not m['keyframe'])
        a['keyframes'] = key_sizes
        a['inter'] = {'count': len(inter), 'median': statistics.median(inter) if inter else 0,
                      'mean': statistics.fmean(inter) if inter else 0,
                      'p90': inter[int(0.9 * (len(inter) - 1))] if inter else 0, 'max': inter[-1] if inter else 0}
        a['seal_overhead'] = statistics.fmean(r - s for _, s, r in p) if p else 0
        a['streams'] = len({m['streamID'] for m, _, _ in p})
        a['size'] = f"{p[0][0]['width']}x{p[0][0]['height']}" if p else '-'
    res['agents'][fmt] = a
u, s, rss, wall = open(f'{d}/x264.time').read().split()[-4:]
xb = os.path.getsize(f'{d}/x264.mp4')
res['x264'] = {'frames': x264_frames, 'bytes': xb, 'mb_per_h': xb / x264_frames * 3600 / 1e6,
               'cpu_pct': 100 * (float(u) + float(s)) / float(wall), 'rss_mib': int(rss) / 1024}
xp = [l.split(',') for l in open(f'{d}/x264.packets') if l.strip()]
res['x264']['keyframes'] = [int(size) for size, flags in xp if 'K' in flags]
res['x264']['inter_median'] = statistics.median(int(size) for size, flags in xp if 'K' not in flags)
json.dump(res, open(f'{d}/result.json', 'w'))
x = res['x264']['mb_per_h']
print(f"{name}: {seconds} s, 1920x1080, 1 frame/s")
for fmt, a in res['agents'].items():
    print(f"  custos-agent {fmt:<5}: {a['records']:>4} records over {a['span_s']:.0f} s, {a['bytes']:>12,} B sealed, "
          f"{a['mb_per_h']:8.2f} MB/h, {a['mb_per_h'] / x:6.2f}x x264; CPU {a['cpu_pct']:.1f}% of one core, "
          f"peak RSS {a['rss_mib']:.0f} MiB; evicted {a['evicted']}, dropped {a['dropped']}")
v = res['agents']['video']
print(f"  x264 (ffmpeg x11grab): {x264_frames:>4} frames, {xb:>12,} B, {x:8.2f} MB/h; ffmpeg process CPU "
      f"{res['x264']['cpu_pct']:.1f}%, peak RSS {res['x264']['rss_mib']:.0f} MiB; keyframes {res['x264']['keyframes']} B, "
      f"other packets median {res['x264']['inter_median']:,.0f} B")
print(f"  AV1 packets ({v['size']}, {v['streams']} stream(s)): keyframes {v['keyframes']} B; "
      f"{v['inter']['count']} inter packets median {v['inter']['median']:,.0f} B, mean {v['inter']['mean']:,.0f}, "
      f"p90 {v['inter']['p90']:,}, max {v['inter']['max']:,}; sealing adds {v['seal_overhead']:.0f} B per packet")
PY
  stop_children
}

for s in desktop document; do run_scene $s; done
echo "load after: $(uptime)"
python3 - "$WORK" "${KEYFRAME_SECONDS:-60}" <<'PY'
import json, sys
print()
print('| scene | recorder | frames | bytes | MB per recorded hour | ratio to x264 | CPU % of one core | peak RSS |')
print('|---|---|---|---|---|---|---|---|')
label = {'desktop': 'desktop (pattern, xclock, xlogo, xterm typing)', 'document': 'document (light root, white xterm typing)'}
for name in ('desktop', 'document'):
    r = json.load(open(f'{sys.argv[1]}/{name}/result.json'))
    x = r['x264']
    first = f"{label[name]}, {r['seconds']} s"
    for fmt, title in (('video', f'**Custos video (AV1, keyframe every {sys.argv[2]} s), sealed**'), ('png', 'Custos png, sealed')):
        a = r['agents'][fmt]
        print(f"| {first} | {title} | {a['records']} | {a['bytes']:,} | {a['mb_per_h']:.2f} | {a['mb_per_h'] / x['mb_per_h']:.2f} "
              f"| {a['cpu_pct']:.1f} | {a['rss_mib']:.0f} MiB |")
        first = ' '
    print(f"| | x264 veryfast crf 23 (ffmpeg x11grab) | {x['frames']} | {x['bytes']:,} | {x['mb_per_h']:.2f} | 1.00 "
          f"| {x['cpu_pct']:.1f} (ffmpeg, grab included) | {x['rss_mib']:.0f} MiB |")
PY
