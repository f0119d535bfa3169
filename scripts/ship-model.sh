#!/usr/bin/env bash
# Ships a trained run as the demo model: copies the model folder of `gen train` (EMA weights,
# config, flow.json, loss log and plot) into assets/models/emoji32, then redoes everything that
# depends on the weights: BOSS schedules, the sample grids of the card and the card's evaluation
# rows with per-group accuracy (printed; paste them into MODEL_CARD.md with the new step count
# and wall time). Needs python3 for the JSON.
#
#   scripts/ship-model.sh runs/emoji32 [guidance]
#
# The default guidance goes into flow.json (default_guidance; 4 unless given).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/ship-model.sh RUN_DIR [guidance]}
guidance=${2:-4}
dest=${DEST:-assets/models/emoji32}
gen=${GEN:-.build/release/gen}
[ -x "$gen" ] || swift build -c release
for f in config.json model.safetensors flow.json loss.csv loss.png; do
  [ -f "$run/$f" ] || { echo "error: $run/$f is missing: is $run a gen train output folder?" >&2; exit 1; }
done
mkdir -p "$dest"
cp "$run/config.json" "$run/model.safetensors" "$run/loss.csv" "$run/loss.png" "$dest/"
# flow.json with the serving guidance
sed -E "s/\"default_guidance\" *: *[0-9.]+/\"default_guidance\" : $guidance/" "$run/flow.json" > "$dest/flow.json"
rm -f "$dest/schedules.json" "$dest/prune-axes.safetensors"
"$gen" schedule boss --model "$dest" --nfe 1...10 --samples 60
"$gen" --model "$dest" --steps 32 --count 8 --seed 1 --out "$dest/samples-32-steps.png"
"$gen" --model "$dest" --steps 8 --count 8 --seed 1 --out "$dest/samples-8-steps.png"
classes=$(python3 -c 'import json,sys; print(" | ".join(n.split(" ")[0] for n in json.load(open(sys.argv[1]))["class_names"]))' "$dest/flow.json")
echo "| steps | guidance | Fréchet distance | accuracy | $classes |"
for spec in "16 1" "16 2.5" "16 $guidance" "8 $guidance" "32 $guidance"; do
  set -- $spec
  "$gen" eval --model "$dest" --steps "$1" --guidance "$2" --samples 135 --reference-steps 0 --json 2>/dev/null \
    | python3 -c '
import json, sys
m = json.load(sys.stdin)
names = json.load(open(sys.argv[3]))["class_names"]
per = " | ".join("%.2f" % m["accuracy_per_class"][n] for n in names)
print("| %s | %s | %.2f | %.2f | %s |" % (sys.argv[1], sys.argv[2], m["frechet"], m["accuracy"], per))' "$1" "$2" "$dest/flow.json"
done
