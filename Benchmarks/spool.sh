#!/usr/bin/env bash
# Spool benchmark: Spool enqueue/ack throughput against raw SQLite with the same settings,
# measured in the same run (docs/SPOOL.md "Benchmark"). Goal: every ratio >= 0.8.
# Usage: Benchmarks/spool.sh [--rounds N] [--dir PATH]   (PATH: where the databases go; default $TMPDIR)
set -eu
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-spool 2>&1 | tail -3
exec "$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-spool" "$@"
