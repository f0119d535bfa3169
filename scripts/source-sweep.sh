#!/usr/bin/env bash
# SourceFM calibration (docs/RESULTS.md, "Calibrating the pruned source"): sweeps the pruning
# threshold τ (and the sampling threshold τ_r) of `gen prune-axes` on the shipped model and
# measures each pruning set with `gen eval` against the Gaussian source, at BOSS 1, 2, 4 and 10
# NFE and uniform 20 NFE, with ≥ 1,000 samples per cell; two source seeds at 4 NFE (ALL_SEEDS=1:
# at every NFE).
#
#   scripts/source-sweep.sh              # about 55 min on 2 cores
#   TAUS="0.001 0.01" NFES="4" SEEDS="1000" scripts/source-sweep.sh    # a smaller sweep
#   TAUS=0.002 PRECISION=f16 NFES=4 UNIFORM_NFES= scripts/source-sweep.sh  # the shipped set's storage
#
# Each cell is one `gen eval --json` line appended to out/sweep/cells.jsonl; cells already there
# are skipped, so an interrupted sweep resumes. Pruning sets are built into
# out/sweep/models/tau-<τ>-r-<τ_r>[-f16]/ (the model's files linked, the set written beside them).
# Output: out/sweep/table.md (made by scripts/source_sweep_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
data=${DATA:-data/emoji32.mrds}
model=${MODEL:-assets/models/emoji32}
out=${OUT:-out/sweep}
taus=${TAUS:-0.0002 0.001 0.002 0.005 0.01}
tau_rs=${TAU_RS:-default}
precision=${PRECISION:-f32}   # storage of the pruning sets (f16: the shipped set's)
boss_nfes=${NFES-4 1 2 10}
uniform_nfes=${UNIFORM_NFES-20}
seeds=${SEEDS:-1000 2000}
samples=${SAMPLES:-1000}
[ -x "$gen" ] || swift build -c release
[ -f "$data" ] || "$gen" dataset emoji --out "$data"
mkdir -p "$out/models"
cells="$out/cells.jsonl"
touch "$cells"

# One model folder per (τ, τ_r): the model's files linked, its own prune-axes.safetensors.
folders=()
for tau in $taus; do
  for r in $tau_rs; do
    dir="$out/models/tau-$tau-r-$r"
    [ "$precision" = f32 ] || dir="$dir-$precision"
    if [ ! -f "$dir/prune-axes.safetensors" ]; then
      mkdir -p "$dir"
      for f in config.json model.safetensors flow.json schedules.json; do
        ln -sf "$(realpath "$model/$f")" "$dir/$f"
      done
      args=(--data "$data" --model "$dir" --tau "$tau" --precision "$precision")
      [ "$r" = default ] || args+=(--tau-r "$r")
      "$gen" prune-axes "${args[@]}" 2>/dev/null | tee "$dir/prune-axes.log" | grep -E '^\|R\||acceptance'
    fi
    folders+=("$dir")
  done
done

# cell LABEL MODEL SOURCE SCHEDULE NFE SEED
cell() {
  local label=$1 dir=$2 source=$3 schedule=$4 nfe=$5 seed=$6
  local key="\"label\":\"$label\",\"schedule\":\"$schedule\",\"steps\":$nfe,\"seed\":$seed"
  grep -qF "$key" "$cells" && return 0
  echo "== $label $schedule NFE $nfe seed $seed"
  local json
  json=$("$gen" eval --model "$dir" --steps "$nfe" --schedule "$schedule" --source "$source" \
    --samples "$samples" --reference-steps 0 --seed "$seed" --batch 4 --data "$data" --json)
  # one line: the cell's key first, then gen eval's fields
  echo "{$key,\"result\":$(echo "$json" | tr -d '\n')}" >> "$cells"
  echo "$json" | grep -E '"(frechet|accuracy|acceptance_rate)"'
}

# Cells in order of importance: every seed at the first BOSS NFE (4, the issue's target), then
# the other BOSS NFEs and the uniform ones at the first seed only unless ALL_SEEDS=1.
first_seed=${seeds%% *}
rest_seeds=$first_seed
[ "${ALL_SEEDS:-0}" = 1 ] && rest_seeds=$seeds
first_nfe=${boss_nfes%% *}
plan=()
[ -z "$first_nfe" ] || for seed in $seeds; do plan+=("boss:$first_nfe:$seed"); done
for nfe in ${boss_nfes#"$first_nfe"}; do for seed in $rest_seeds; do plan+=("boss:$nfe:$seed"); done; done
for nfe in $uniform_nfes; do for seed in $rest_seeds; do plan+=("uniform:$nfe:$seed"); done; done
for entry in "${plan[@]}"; do
  IFS=: read -r schedule nfe seed <<< "$entry"
  cell gaussian "$model" gaussian "$schedule" "$nfe" "$seed"
  for dir in "${folders[@]}"; do cell "$(basename "$dir")" "$dir" pruned "$schedule" "$nfe" "$seed"; done
done
python3 scripts/source_sweep_table.py "$out"
