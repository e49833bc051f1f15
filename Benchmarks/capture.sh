#!/usr/bin/env bash
# Screen-capture benchmark: Custos grab + PNG encode vs `ffmpeg -f x11grab … -c:v png`,
# both on the same 1920x1080x24 Xvfb in the same run (see Benchmarks/CaptureBench/main.swift).
# Usage: Benchmarks/capture.sh [frames] [--exclusions]   (needs Xvfb and ffmpeg; builds release)
# --exclusions: the cost of exclude-window-class/-title instead (with / without, same run).
set -eu
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
FRAMES=${1:-30}
EXTRA=${2:-}
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-capture >/dev/null
BIN=$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-capture
OUT=$(mktemp)
Xvfb -displayfd 1 -screen 0 1920x1080x24 -nolisten tcp -noreset >"$OUT" 2>/dev/null &
XPID=$!
trap 'kill $XPID 2>/dev/null; rm -f "$OUT"' EXIT INT TERM
i=0
while [ ! -s "$OUT" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
DISP=":$(head -n1 "$OUT")"
"$BIN" --display "$DISP" --frames "$FRAMES" $EXTRA
