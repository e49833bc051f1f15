#!/usr/bin/env bash
# Envelope benchmarks: Custos seal throughput at 1 MiB blobs vs `openssl speed -evp aes-256-gcm
# -bytes 1048576` (ratio, goal >= 0.9), and RSA wrap/unwrap per second vs `openssl speed rsa2048`,
# all measured in the same run. Release build. Extra arguments go to the benchmark
# (--samples N, --keys DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. Benchmarks/release-flags.sh
command -v openssl >/dev/null || { echo "envelope.sh: openssl is required (make deps)" >&2; exit 2; }
swift build "${RELEASE_FLAGS[@]}" --product custos-bench-envelope >&2
exec "$(swift build "${RELEASE_FLAGS[@]}" --show-bin-path)/custos-bench-envelope" "$@"
