#!/usr/bin/env bash
# Collector ingest benchmarks (Benchmarks/CollectorsBench/main.swift), release build, same run (issue 14):
# 1,000 concurrent simulated agents (pinned TLS on 127.0.0.1, one connection each) upload to real
# custos-collector processes, each run on a fresh database:
#  1. one collector on SQLite vs one on PostgreSQL (a throwaway cluster, fsync on): requests/s,
#     captures/s, p99 acknowledgement time; PostgreSQL ÷ SQLite (goal >= 0.8);
#  2. 1, 2 and 3 collectors (separate processes, own ports) on one PostgreSQL, agents spread over them.
# CPU per process (generator, collectors, PostgreSQL, other work) from /proc; any error exits 1.
# Default: 3 rounds of 4 s windows (about 2 minutes). Longer: --seconds 30 --rounds 5. Fewer set-ups:
# --set-ups sqlite1,pg1 (of sqlite1,pg1,pg2,pg3); another collector binary: --collector PATH.
# Usage: Benchmarks/collectors.sh [--agents N] [--seconds N] [--rounds N] [--blobs N] [--blob-bytes N] [--set-ups LIST]   (needs make deps: postgresql, sqlite3, openssl)
set -eu
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
for tool in openssl sqlite3 psql; do
    command -v "$tool" >/dev/null || { echo "collectors.sh: $tool is required (make deps)" >&2; exit 2; }
done
# 1,000 agents hold 1,000 client connections here and as many server ones in the collectors.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
swift build "${RELEASE_FLAGS[@]}" --product custos-collector 2>&1 | tail -3
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-collectors 2>&1 | tail -3
bin="$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)"
exec "$bin/custos-bench-collectors" --collector "$bin/custos-collector" "$@"
