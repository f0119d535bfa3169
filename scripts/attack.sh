#!/usr/bin/env bash
# Hostile-client checks of `gen serve` on 127.0.0.1 (scripts/attack.py does the work; see its
# --help). Builds the release binary first when it is missing.
#   scripts/attack.sh [--quick] [--rss-mb MB] [--gen PATH] [--only a,b] [-- GEN SERVE FLAGS...]
#   scripts/attack.sh --gen .build-attack/release/gen --quick -- --memory-budget 512
# Prints `PASS name: ...` / `FAIL name: ...` per attack and `N passed, M failed`; exit 1 on any FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"

# The binary: --gen PATH (or --gen=PATH) among the script's own options (those before --).
gen=.build/release/gen
help=0
prev=
for a in "$@"; do
  [ "$a" = "--" ] && break
  case "$a" in
    -h|--help) help=1 ;;
    --gen=*) gen=${a#--gen=} ;;
  esac
  [ "$prev" = "--gen" ] && gen=$a
  prev=$a
done

if [ "$help" = 0 ] && [ ! -x "$gen" ]; then
  # Build into the scratch folder the path names (.build-attack/release/gen → .build-attack),
  # so a build for this script never touches another build folder.
  case "$gen" in
    */release/gen) scratch=${gen%/release/gen} ;;
    *) echo "attack.sh: $gen does not exist and is not a SCRATCH/release/gen path to build" >&2; exit 2 ;;
  esac
  echo "attack.sh: $gen missing; building: swift build -c release --scratch-path $scratch" >&2
  swift build -c release --scratch-path "$scratch" >&2
fi

exec python3 scripts/attack.py "$@"
