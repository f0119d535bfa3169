#!/usr/bin/env bash
# The issue's bars on clips nobody chose from: makes 12 scene clips with `gen clips --scene` (an
# animal, a vehicle or object and a food, drawn at random from fixed lists by the set's seed, over
# light gradients), streams each in three of the 9 groups in turn (36 rows per set, each group 4
# times) with the filter off, and prints one row per stream (luma correlation, classifier
# agreement, flicker on static pixels, frames/s, the group the classifier read most), then a line
# per group and per set and a total over all sets: the rows meeting both bars (luma ≥ 0.75 and
# agreement ≥ 0.8) and all three (flicker ≤ 0.01 too).
#
#   scripts/stream-classes.sh                          # the defaults, clips of seed 23
#   SEED=41 scripts/stream-classes.sh --structure 0.65
#   SEEDS="57 41 23 73" scripts/stream-classes.sh      # the 144 rows of docs/STREAMS.md
#   MODEL=assets/models/scenes64-i2i scripts/stream-classes.sh
#
# Arguments: extra `gen stream` options. Environment: SEEDS (sets, space-separated) or SEED
# (one set; default 23), MODEL (default gen stream's), GEN (default .build/release/gen), OUT
# (default out/stream-classes; each set's clips go to OUT/clips-SEED and are reused when there,
# its rows to OUT/rows-SEED.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
[ -x "$gen" ] || swift build -c release --product gen
seeds=(${SEEDS:-${SEED:-23}})
out=${OUT:-out/stream-classes}
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
for seed in "${seeds[@]}"; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "stream-classes: a set's seed is a whole number, not '$seed'" >&2; exit 2; }
done

groups=("Smileys & Emotion" "People & Body" "Animals & Nature" "Food & Drink" "Travel & Places" "Activities" "Objects" "Symbols" "Flags")
echo "| set | clip | class | luma correlation | classifier agreement | flicker (static) | frames/s | read most as |"
echo "|---|---|---|---:|---:|---:|---:|---|"
for seed in "${seeds[@]}"; do
  clips="$out/clips-$seed"
  if [ ! -f "$clips/12/frame-047.png" ]; then
    python3 - "$seed" <<'EOF' | while read -r i seedi emoji; do "$gen" clips --scene "$emoji" --seed "$seedi" --out "$clips/$i" >/dev/null; done
import random, sys
seed = int(sys.argv[1]); r = random.Random(seed)
animals = "🐶 🐱 🐭 🦊 🐻 🐼 🐨 🐯 🦁 🐮 🐷 🐸 🐵 🐔 🐧 🐦 🦆 🦅 🦉 🐺 🐗 🐴 🦄 🐝 🐛 🦋 🐌 🐞 🐢 🐍 🦎 🐙 🦑 🦀 🐠 🐬 🐳 🦈 🐊 🐘 🦒 🐪 🦘 🐿️ 🦔 🌵 🌲 🌻 🌷 🍄".split()
things = "🚗 🚕 🚌 🚓 🚑 🚒 🚜 🚲 🛵 ✈️ 🚀 ⛵ 🚂 🏠 🏰 ⛺ 🗼 🎈 ⚽ 🏀 🎸 🎮 🎁 📱 💡 📚 ✏️ 🔑 ⏰ 🎩 👓 🧸 🪁 🥁 🎺 ☂️ 🧲 🔨 🪑 🛒".split()
food = "🍎 🍐 🍊 🍋 🍌 🍉 🍇 🍓 🍒 🍑 🍍 🥝 🍅 🥑 🥦 🥕 🌽 🍞 🧀 🍕 🍔 🍟 🌭 🍩 🍪 🎂 🍦 🍫 🥐 🍿".split()
for i in range(12):
    e = [r.choice(animals), r.choice(things), r.choice(food)]
    r.shuffle(e)
    print(i + 1, seed * 100 + i, " ".join(e))
EOF
  fi
  rows="$out/rows-$seed.txt"
  : > "$rows"
  for i in $(seq 1 12); do
    for k in 0 1 2; do
      class=${groups[$(( (i * 3 + k) % 9 ))]}
      summary=$("$gen" stream --input "$clips/$i" --out "$out/run" "${model[@]}" --class "$class" --no-filter "$@" 2>/dev/null)
      python3 - "$i" "$class" "$summary" <<'EOF' | tee -a "$rows" | sed "s/^/| $seed /"
import json, sys
i, c, s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
votes = s.get("classifier_votes") or {"-": 0}
print("| %s | %s | %.2f | %.2f | %.4f | %.1f | %s |" % (i, c, s["luma_correlation"], s["classifier_agreement"], s["flicker_static"],
                                                      s["output_fps"], max(votes, key=votes.get)))
EOF
    done
  done
done
python3 - "$out" "${seeds[@]}" <<'EOF'
import sys
out, seeds = sys.argv[1], sys.argv[2:]
def bars(r):
    both = float(r[2]) >= 0.75 and float(r[3]) >= 0.8
    return both, both and float(r[4]) <= 0.01
rows, groups, sets = [], {}, []
for seed in seeds:
    got = [[c.strip() for c in line.strip().strip("|").split("|")] for line in open(f"{out}/rows-{seed}.txt") if line.strip()]
    sets.append((seed, sum(bars(r)[0] for r in got), sum(bars(r)[1] for r in got), len(got)))
    rows += got
for r in rows:
    both, three = bars(r)
    g = groups.setdefault(r[1], [0, 0, 0]); g[0] += both; g[1] += three; g[2] += 1
order = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects", "Symbols", "Flags"]
print()
for c in sorted(groups, key=lambda c: order.index(c) if c in order else len(order)):
    b, t, n = groups[c]
    print(f"{c}: {b} of {n} rows meet both bars, {t} all three")
if len(sets) > 1:
    for seed, b, t, n in sets: print(f"SEED={seed}: {b} of {n} rows meet both bars, {t} all three")
flicker = [float(r[4]) for r in rows]
print(f"all: {sum(s[1] for s in sets)} of {len(rows)} rows meet both bars, {sum(s[2] for s in sets)} all three; "
      f"mean luma {sum(float(r[2]) for r in rows) / len(rows):.2f}, "
      f"mean agreement {sum(float(r[3]) for r in rows) / len(rows):.2f}, "
      f"flicker over 0.01 on {sum(f > 0.01 for f in flicker)} rows, largest {max(flicker):.4f}, "
      f"smallest frames/s {min(float(r[5]) for r in rows):.1f}")
EOF
