#!/usr/bin/env bash
# Agent footprint: CPU (% of one core) and peak RSS of a release custos-agent over a fixed run
# on a 1920x1080x24 Xvfb with issue 13's desktop scene (Benchmarks/scenes.sh: patterned root,
# xclock ticking, xlogo, xdotool typing into an xterm through XTEST), sealing end to end into its
# spool (no collector: the upload loop is idle). One run per entry of AGENT_BENCH_RUNS
# (FORMAT:INTERVAL_MS), one after the other on the same display; the default is the agent's
# defaults (video, 1 frame/s) and, for comparison, PNG at 1 frame/s and both at 1 frame/5 s (the
# old default and issue 13's CPU baseline). For scale, the same display measures
# `ffmpeg -f x11grab -c:v png` CPU per frame (median of 5).
# Usage: Benchmarks/agent.sh [seconds per run]   (default 60; goals: issue 13, peak RSS <= 96 MB
#   with one 1920x1080 monitor, video CPU per recorded minute <= 0.5x the PNG path's)
# AGENT_BENCH_BIN=path uses that custos-agent instead of the release build;
# AGENT_BENCH_SMAPS=DIR copies each run's /proc/PID/smaps there before stopping it.
set -euo pipefail
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
. Benchmarks/scenes.sh
SECONDS_RUN=${1:-60}
RUNS=${AGENT_BENCH_RUNS:-video:1000 png:1000 video:5000 png:5000}
WARMUP=10
[ "$SECONDS_RUN" -gt $((WARMUP + 10)) ] 2>/dev/null || { echo "usage: $0 [seconds per run, more than $((WARMUP + 10))]" >&2; exit 2; }
if [ -z "${AGENT_BENCH_BIN:-}" ]; then
  swift build "${RELEASE_FLAGS[@]}" --product custos-agent >/dev/null
  AGENT_BENCH_BIN="$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-agent"
fi
WORK=$(mktemp -d); chmod 700 "$WORK"
pids=()
cleanup() { stop_children; rm -rf "$WORK"; }
trap cleanup EXIT
start_display agent
start_scene desktop
openssl genrsa -out "$WORK/k.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/k.pem" -pubout -out "$WORK/kek.pem" 2>/dev/null
start_typing 1000000  # until stopped
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
echo "load before: $(uptime)"
echo "CPU over the whole run (startup and first keyframe included) and steady (from ${WARMUP} s after the start);"
echo "CPU ms per frame = CPU time over the frames sealed in that window; peak RSS is VmHWM."
printf '%-12s %6s %10s %9s %10s %9s %12s %9s  %s\n' run frames "CPU %" "ms/frame" "steady %" "ms/frame" "sealed bytes" "peak RSS" "RSS at the end (kB)"
for run in $RUNS; do
  fmt=${run%%:*}; interval=${run#*:}
  spool="$WORK/spool-$fmt-$interval"
  if [ "$run" = "video:1000" ]; then
    # The agent's defaults: screen-format=video, screen-interval-ms=1000 (not written).
    fmtlines=""
  else
    fmtlines="screen-format=$fmt
screen-interval-ms=$interval"
  fi
  cat > "$WORK/$run.cfg" <<CFG
enable-encryption=1
kek-file=$WORK/kek.pem
display=$DISPLAY
$fmtlines
keystroke-idle-ms=2000
spool-dir=$spool
CFG
  "$AGENT_BENCH_BIN" --config "$WORK/$run.cfg" 2>"$WORK/agent.log" & AGENT=$!; pids+=($AGENT)
  s0=$(date +%s%3N)
  sleep "$WARMUP"
  ta=$(ticks $AGENT); sa=$(date +%s%3N)
  sleep $((SECONDS_RUN - WARMUP))
  kill -0 $AGENT 2>/dev/null || { echo "$0: custos-agent ($run) exited early; its log:" >&2; cat "$WORK/agent.log" >&2; exit 1; }
  t1=$(ticks $AGENT); s1=$(date +%s%3N)
  RSS=$(awk '/VmHWM/ {print $2}' /proc/$AGENT/status)
  PARTS=$(awk '/^(VmRSS|RssAnon|RssFile|RssShmem|Threads):/ {printf "%s %s  ", $1, $2}' /proc/$AGENT/status)
  [ -n "${AGENT_BENCH_SMAPS:-}" ] && cp /proc/$AGENT/smaps "$AGENT_BENCH_SMAPS/smaps-$fmt-$interval"
  kill -TERM $AGENT; wait $AGENT || { echo "$0: custos-agent ($run) failed; its log:" >&2; cat "$WORK/agent.log" >&2; exit 1; }
  forget_children $AGENT
  "$AGENT_BENCH_BIN" status --config "$WORK/$run.cfg" > "$WORK/status"
  read -r FRAMES BYTES < <(sed -n 's/^spool by kind:.*screen \([0-9]*\) (\([0-9]*\) bytes).*/\1 \2/p' "$WORK/status")
  [ -n "${FRAMES:-}" ] || { echo "$0: no screen count in custos-agent status:" >&2; cat "$WORK/status" >&2; exit 1; }
  STEADY=$(sqlite3 "file:$spool/spool.db?mode=ro" \
    "SELECT count(*) FROM record WHERE kind = 'screen' AND capture_ms >= $sa AND capture_ms < $s1")
  python3 - "$run" "$HZ" "$s0" "$sa" "$s1" "$ta" "$t1" "$FRAMES" "$STEADY" "$BYTES" "$RSS" "$PARTS" <<'PY'
import sys
run, hz, s0, sa, s1, ta, t1, frames, steady, nbytes, rss, parts = sys.argv[1:]
hz, s0, sa, s1, ta, t1, frames, steady = map(int, (hz, s0, sa, s1, ta, t1, frames, steady))
ms = lambda ticks: ticks * 1000 / hz
per = lambda ticks, n: f"{ms(ticks) / n:.1f}" if n else "-"
print(f"{run:<12} {frames:>6} {100 * ms(t1) / (s1 - s0):9.2f}% {per(t1, frames):>9} {100 * ms(t1 - ta) / (s1 - sa):9.2f}% "
      f"{per(t1 - ta, steady):>9} {int(nbytes):>12,} {int(rss) // 1024:>5} MiB  {parts}")
PY
  rm -rf "$spool"
done
echo "load after: $(uptime)"
# ffmpeg x11grab -> PNG, CPU per frame (user+sys), median of 5 single-frame runs.
ff=()
for i in 1 2 3 4 5; do
  /usr/bin/time -f '%U %S' -o "$WORK/t" ffmpeg -v error -y -f x11grab -video_size 1920x1080 -i "$DISPLAY" -frames:v 1 -c:v png "$WORK/f.png" >/dev/null 2>&1
  ff+=("$(awk '{print ($1+$2)*1000}' "$WORK/t")")
done
FFMS=$(printf '%s\n' "${ff[@]}" | sort -n | sed -n 3p)
printf '%-46s %s\n' "ffmpeg x11grab -> PNG, CPU per frame (median of 5)" "${FFMS} ms (process start included)"
