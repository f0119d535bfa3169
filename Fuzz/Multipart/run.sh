#!/usr/bin/env bash
# Builds the multipart/form-data fuzz target with swiftc (libFuzzer + AddressSanitizer) and runs it.
#   Fuzz/Multipart/run.sh [seconds] [extra libFuzzer flags...]
# Default 60 seconds. Crashes are written to .build-fuzz/multipart/crash-*; reproduce one with
#   .build-fuzz/multipart/fuzz-multipart .build-fuzz/multipart/crash-<hash>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/.build-fuzz/multipart"
seconds="${1:-60}"; shift || true
mkdir -p "$out/corpus"
cp -n "$here"/seeds/* "$out/corpus/" 2>/dev/null || true

swiftc -parse-as-library -module-name MultipartFuzz -O -g \
    -sanitize=fuzzer,address \
    "$here/main.swift" "$root/Sources/Millrace/Server/Multipart.swift" \
    -o "$out/fuzz-multipart"

cd "$out"
exec ./fuzz-multipart -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -dict="$here/multipart.dict" -print_final_stats=1 "$@" corpus
