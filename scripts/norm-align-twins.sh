#!/usr/bin/env bash
# Norm alignment from scratch (docs/RESULTS.md, "Norm alignment, trained from scratch"): two
# models of the shipped architecture trained from the same seed for the same steps, one plain and
# one with --norm-align (docs/METHODS.md §4.1), then evaluated alike with `gen eval` (uniform
# Euler at 4 and 10 NFE, guidance 4, 1,000 samples, two source seeds).
#
#   scripts/norm-align-twins.sh              # trains both (about 1 h 15 min side by side), evaluates
#   STEPS=1000 scripts/norm-align-twins.sh   # shorter runs
#   TRAIN=0 scripts/norm-align-twins.sh      # evaluate the runs as they stand (their last checkpoint)
#
# The twins train side by side, one core each (--workers 1 --threads 1), into runs/twin-plain and
# runs/twin-aligned (gitignored; an interrupted run resumes). Before evaluating, each run's model
# folder is copied to runs/twin-<kind>-<step>, the step of its last checkpoint (model.safetensors'
# metadata), and both must stand at the same step. Cells go to out/twins/cells.jsonl (skipped when already there).
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
data=${DATA:-data/emoji32.mrds}
steps=${STEPS:-2000}
out=${OUT:-out/twins}
samples=${SAMPLES:-1000}
seeds=${SEEDS:-1000 2000}
nfes=${NFES:-4 10}
[ -x "$gen" ] || swift build -c release
[ -f "$data" ] || "$gen" dataset emoji --out "$data"
mkdir -p "$out" runs
cells="$out/cells.jsonl"
touch "$cells"

train() {  # KIND [EXTRA FLAGS]
  local kind=$1; shift
  local dir=runs/twin-$kind
  local resume=()
  [ -f "$dir/checkpoint.safetensors" ] && resume=(--resume)
  "$gen" train --data "$data" --out "$dir" --steps "$steps" --batch 32 --lr 6e-4 --decay cosine \
    --seed 4242 --workers 1 --threads 1 --checkpoint-every 250 "${resume[@]}" "$@"
}
if [ "${TRAIN:-1}" = 1 ]; then
  train plain &
  train aligned --norm-align &
  wait
fi
step() {  # the step of a run's model.safetensors (its metadata), written at each checkpoint
  python3 -c 'import json, struct, sys; f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; print(json.loads(f.read(n))["__metadata__"]["step"])' "runs/twin-$1/model.safetensors"
}
eval_at=$(step plain)
[ "$(step aligned)" = "$eval_at" ] || { echo "the twins stand at different steps ($eval_at, $(step aligned)): resume the shorter one" >&2; exit 1; }
for kind in plain aligned; do
  snap=runs/twin-$kind-$eval_at
  [ -d "$snap" ] || { mkdir -p "$snap"; cp runs/twin-$kind/{config.json,flow.json,model.safetensors,loss.csv} "$snap/"; }
done

for nfe in $nfes; do
  for seed in $seeds; do
    for kind in plain aligned; do
      key="\"model\":\"$kind-$eval_at\",\"steps\":$nfe,\"seed\":$seed"
      grep -qF "$key" "$cells" && continue
      echo "== $kind (step $eval_at), uniform $nfe NFE, seed $seed"
      json=$("$gen" eval --model "runs/twin-$kind-$eval_at" --steps "$nfe" --guidance 4 --samples "$samples" \
        --reference-steps 0 --seed "$seed" --batch 4 --data "$data" --json)
      echo "{$key,\"result\":$(echo "$json" | tr -d '\n')}" >> "$cells"
      echo "$json" | grep -E '"(frechet|accuracy)"'
    done
  done
done
python3 - "$cells" <<'PY'
import json, sys
from collections import defaultdict
cells = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for c in cells:
    by[(c["model"], c["steps"])].append(c["result"])
models = sorted({c["model"] for c in cells})
nfes = sorted({c["steps"] for c in cells})
def cell(rs, key, d):
    v = [r[key] for r in rs]
    if not v: return ""
    m = sum(v) / len(v)
    return f"{m:.{d}f}" + (f" ±{(max(v) - min(v)) / 2:.{d}f}" if len(v) > 1 else "")
print("| model | " + " | ".join(f"FD, {n} NFE" for n in nfes) + " | " + " | ".join(f"accuracy, {n} NFE" for n in nfes) + " |")
print("|---|" + "---:|" * (2 * len(nfes)))
for m in models:
    print(f"| {m} | " + " | ".join(cell(by[(m, n)], "frechet", 2) for n in nfes) + " | "
          + " | ".join(cell(by[(m, n)], "accuracy", 3) for n in nfes) + " |")
PY
