#!/usr/bin/env bash
# The share of frames the similarity filter processes on each clip, averaged over seeds of its
# draws (docs/STREAMS.md, "Similarity filter"). The filter does not depend on the model, so the
# small emoji model keeps it quick.
#
#   scripts/filter-shares.sh                          # the scene clips, seeds 0-7
#   CLIPS="still moving" SEEDS="0 1" scripts/filter-shares.sh
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
[ -x "$gen" ] || swift build -c release --product gen
clips=${CLIPS-scene scene-heldout scene-noise sketch}
seeds=${SEEDS-0 1 2 3 4 5 6 7}
model=${MODEL:-assets/models/emoji32}
echo "| clip | frames | processed (mean over seeds $seeds) |"
echo "|---|---:|---:|"
for clip in $clips; do
  total=0; n=0; frames=0
  for seed in $seeds; do
    p=$("$gen" stream --input "assets/clips/$clip" --out "out/filter-shares/$clip" --model "$model" --classifier none --seed "$seed" 2>/dev/null \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["processed"], d["frames_in"])')
    set -- $p; total=$((total + $1)); frames=$2; n=$((n + 1))
  done
  python3 -c "import sys; t,n,f=map(int,sys.argv[1:]); print('| %s | %d | %.1f (%.0f%%) |' % ('$clip', f, t/n, 100*t/n/f))" "$total" "$n" "$frames"
done
