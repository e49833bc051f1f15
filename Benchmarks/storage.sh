#!/usr/bin/env bash
# Storage benchmarks (Benchmarks/StorageBench/main.swift), release build, same run (issue 14):
#  1. ingest through the storage seam into SQLite and into PostgreSQL (a throwaway cluster the
#     program starts, fsync on): captures/s each and PostgreSQL ÷ SQLite (goal >= 0.8);
#  2. the newest 100 of 1,000,000 captures, one agent's newest 100, and a page after a deep
#     cursor, on both (goal < 50 ms).
# Usage: Benchmarks/storage.sh [--captures N] [--blob-bytes N] [--batch N] [--rows N]   (needs make deps: postgresql, sqlite3)
set -eu
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
command -v sqlite3 >/dev/null || { echo "storage.sh: sqlite3 is required (make deps)" >&2; exit 2; }
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-storage 2>&1 | tail -3
exec "$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-storage" "$@"
