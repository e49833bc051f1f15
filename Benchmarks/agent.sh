#!/usr/bin/env bash
# Agent footprint: CPU (% of one core) and peak RSS of a release custos-agent over a fixed run
# on a 1920x1080x24 Xvfb with desktop-like content, one frame per 5 s, xdotool typing, sealing
# end to end into its spool (no collector: the upload loop is idle). For scale, the same run
# measures `ffmpeg -f x11grab -c:v png` CPU per frame (median of 5) on the same display.
# Usage: Benchmarks/agent.sh [seconds]   (default 60; goals: < 1% of one core, < 40 MB RSS)
set -euo pipefail
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
SECONDS_RUN=${1:-60}
swift build "${RELEASE_FLAGS[@]}" --product custos-agent >/dev/null
BIN=$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)
WORK=$(mktemp -d); chmod 700 "$WORK"
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
Xvfb -displayfd 3 -screen 0 1920x1080x24 -nolisten tcp -noreset 3>"$WORK/d" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -s "$WORK/d" ] && break; sleep 0.1; done
export DISPLAY=":$(head -1 "$WORK/d")"
# Desktop-like content: a patterned root, a few windows with text and graphics.
xsetroot -mod 6 6 -fg '#3465a4' -bg '#729fcf'
xlogo -geometry 500x400+80+80 >/dev/null 2>&1 & pids+=($!)
xclock -geometry 300x300+1500+80 -update 1 >/dev/null 2>&1 & pids+=($!)
xterm -T notes -geometry 120x40+650+300 -e cat >/dev/null 2>&1 & pids+=($!)
sleep 1
openssl genrsa -out "$WORK/k.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/k.pem" -pubout -out "$WORK/kek.pem" 2>/dev/null
cat > "$WORK/config.cfg" <<CFG
enable-encryption=1
kek-file=$WORK/kek.pem
display=$DISPLAY
screen-interval-ms=5000
keystroke-idle-ms=2000
spool-dir=$WORK/spool
CFG
"${AGENT_BENCH_BIN:-$BIN/custos-agent}" --config "$WORK/config.cfg" 2>"$WORK/agent.log" & AGENT=$!; pids+=($AGENT)
sleep 2
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
t0=$(ticks $AGENT); s0=$(date +%s.%N)
WIN=$(xdotool search --name notes | head -1)
end=$(( $(date +%s) + SECONDS_RUN ))
while [ "$(date +%s)" -lt $end ]; do
  xdotool type --window "$WIN" --delay 120 "the quick brown fox jumps over the lazy dog " 2>/dev/null
  sleep 1
done
t1=$(ticks $AGENT); s1=$(date +%s.%N)
RSS=$(awk '/VmHWM/ {print $2}' /proc/$AGENT/status)
PARTS=$(awk '/^(VmRSS|RssAnon|RssFile|RssShmem|Threads):/ {printf "%s %s  ", $1, $2}' /proc/$AGENT/status)
[ -n "${AGENT_BENCH_SMAPS:-}" ] && cp /proc/$AGENT/smaps "$AGENT_BENCH_SMAPS" 
kill -TERM $AGENT; wait $AGENT || true
CPU=$(python3 -c "print(f'{100*($t1-$t0)/$HZ/($s1-$s0):.3f}')")
# ffmpeg x11grab -> PNG, CPU per frame (user+sys), median of 5 single-frame runs.
ff=()
for i in 1 2 3 4 5; do
  /usr/bin/time -f '%U %S' -o "$WORK/t" ffmpeg -v error -y -f x11grab -video_size 1920x1080 -i "$DISPLAY" -frames:v 1 -c:v png "$WORK/f.png" >/dev/null 2>&1
  ff+=("$(awk '{print ($1+$2)*1000}' "$WORK/t")")
done
FFMS=$(printf '%s\n' "${ff[@]}" | sort -n | sed -n 3p)
printf '%-46s %s\n' "agent CPU over ${SECONDS_RUN}s (1 frame/5 s + typing)" "${CPU}% of one core (goal < 1%)" \
  "agent peak RSS (VmHWM)" "$((RSS / 1024)) MiB (goal < 40 MB)" \
  "agent RSS at the end (kB)" "$PARTS" \
  "ffmpeg x11grab -> PNG, CPU per frame (median of 5)" "${FFMS} ms (process start included)" \
  "ffmpeg at 1 frame/5 s would be" "$(python3 -c "print(f'{$FFMS/5000*100:.2f}')")% of one core"
