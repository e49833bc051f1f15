#!/usr/bin/env bash
# Network benchmarks (Benchmarks/NetBench/main.swift), all on 127.0.0.1 in one process, release build:
#  1. upload throughput (pinned TLS + HTTP + collector parse + SQLite store + ack, 4 MiB batches)
#     against the same bytes over a plain TLS stream to a discarding NIOSSL server, same run
#     (ratio; goal >= 0.8), and against the same stream written to a file with fdatasync every
#     4 MiB (the collector's durability without HTTP, parsing or SQLite);
#  2. collector ingest with many concurrent simulated agents (default 1,000), each on its own TLS
#     connection: requests/s and p50/p99 acknowledgement time.
# Usage: Benchmarks/net.sh [--mib N] [--blob-kib N] [--lanes N] [--batch-kib N] [--rounds N] [--agents N] [--requests N]   (needs openssl)
set -eu
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
command -v openssl >/dev/null || { echo "net.sh: openssl is required (make deps)" >&2; exit 2; }
# 1,000 agents need ~2,000 file descriptors (client and server side of each connection).
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-net 2>&1 | tail -3
exec "$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-net" "$@"
