#!/usr/bin/env bash
# Few-step generation results (docs/RESULTS.md, "Few-step generation"): builds every input that is
# missing, then evaluates NFE 1, 2, 4, 6, 8, 10 × {uniform, BOSS, BOSS + straightened} ×
# {gaussian, pruned} × {plain, norm-aligned} with `gen eval table`.
#
#   scripts/few-step-results.sh            # everything; about 1 h on 2 cores
#
# Inputs it makes (under runs/, which is gitignored), each skipped when already there:
#   data/emoji32.mrds                       gen dataset emoji
#   runs/emoji32-na                         the norm-aligned variant: ALIGN_FROM (default the
#                                           shipped model) fine-tuned with --norm-align for
#                                           ALIGN_STEPS steps (default 1000), served at the
#                                           plain model's default guidance
#   <model>/schedules.json                  gen schedule boss --nfe 1...10
#   <model>/prune-axes.safetensors          gen prune-axes (gitignored: 25 MB)
#   runs/straight/<model>-<N>               gen straighten --nfe N (teacher states cached once)
# Outputs: out/few-step/{table.md,cells.json,fd-vs-nfe.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
data=${DATA:-data/emoji32.mrds}
plain=${PLAIN:-assets/models/emoji32}
aligned=${ALIGNED:-runs/emoji32-na}
out=${OUT:-out/few-step}
nfes=${NFES:-1 2 4 6 8 10}
samples=${SAMPLES:-135}
[ -x "$gen" ] || swift build -c release
mkdir -p "$out" runs/straight
[ -f "$data" ] || "$gen" dataset emoji --out "$data"

if [ ! -f "$aligned/model.safetensors" ]; then
  "$gen" train --data "$data" --out "$aligned" --init-from "${ALIGN_FROM:-$plain}" --norm-align \
    --steps "${ALIGN_STEPS:-1000}" --lr "${ALIGN_LR:-4e-4}" --batch 32 --checkpoint-every 250
  # serve (and compare) it at the plain model's guidance
  g=$(sed -nE 's/.*"default_guidance" *: *([0-9.]+).*/\1/p' "$plain/flow.json")
  sed -i -E "s/\"default_guidance\" *: *[0-9.]+/\"default_guidance\" : ${g:-1}/" "$aligned/flow.json"
fi

for model in "$plain" "$aligned"; do
  [ -f "$model/schedules.json" ] || "$gen" schedule boss --model "$model" --nfe 1...10 --samples 60
  [ -f "$model/prune-axes.safetensors" ] || "$gen" prune-axes --data "$data" --model "$model"
done

straight_args=()
for pair in "plain:$plain" "aligned:$aligned"; do
  name=${pair%%:*}; model=${pair#*:}
  for n in $nfes; do
    dir=runs/straight/$name-$n
    [ -f "$dir/model.safetensors" ] || "$gen" straighten --model "$model" --nfe "$n" --out "$dir" \
      --samples "${TEACHER_SAMPLES:-256}" --steps "${STRAIGHTEN_STEPS:-300}" \
      --teacher-cache "runs/straight/$name-teacher.safetensors"
  done
  straight_args+=(--straightened "$name=runs/straight/$name-{n}")
done

"$gen" eval table --model "plain=$plain" --model "aligned=$aligned" "${straight_args[@]}" \
  --nfe "$(echo $nfes | tr ' ' ',')" --sources gaussian,pruned --samples "$samples" \
  --data "$data" --markdown "$out/table.md" --json "$out/cells.json" --plot "$out/fd-vs-nfe.png"
echo "wrote $out/table.md, $out/cells.json, $out/fd-vs-nfe.png"
