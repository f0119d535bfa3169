#!/usr/bin/env bash
# The measures of docs/STREAMS.md's tables: runs `gen stream` over clips and settings and prints
# one Markdown row per (clip, settings) with luma correlation, classifier agreement, flicker on
# static pixels (filter off), the share of frames the filter processes (filter on) and the
# output frames/s of the filter-off run.
#
#   scripts/stream-table.sh                                    # the defaults on the scene clips
#   MODEL=assets/models/emoji32 CLIPS="moving" scripts/stream-table.sh "--steps 1 --strength 0.8"
#
# Arguments: settings, one quoted string each (default: "" = gen stream's defaults).
# Environment: MODEL (default: gen stream's), CLIPS (names under assets/clips; default: scene
# scene-heldout sketch), CLASS (default "Animals & Nature"; "auto": the group the clip's name
# suggests is not guessed, so give one), GEN (default .build/release/gen), OUT (default out/stream-table).
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${GEN:-.build/release/gen}
[ -x "$gen" ] || swift build -c release --product gen
clips=${CLIPS-scene scene-heldout sketch}
class=${CLASS-Animals & Nature}
out=${OUT:-out/stream-table}
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
[ $# -eq 0 ] && set -- ""
echo "| clip | settings | luma correlation | classifier agreement | flicker (static) | processed with filter | frames/s |"
echo "|---|---|---:|---:|---:|---:|---:|"
for clip in $clips; do
  for settings in "$@"; do
    # shellcheck disable=SC2086
    off=$("$gen" stream --input "assets/clips/$clip" --out "$out/$clip-off" "${model[@]}" --class "$class" --no-filter $settings 2>/dev/null)
    # shellcheck disable=SC2086
    on=$("$gen" stream --input "assets/clips/$clip" --out "$out/$clip-on" "${model[@]}" --class "$class" --classifier none $settings 2>/dev/null)
    python3 - "$clip" "${settings:-defaults}" "$off" "$on" <<'EOF'
import json, sys
clip, settings, off, on = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
get = lambda d, k, f: (f % d[k]) if k in d else "–"
print("| %s | %s | %s | %s | %s | %d / %d | %.1f |" % (clip, settings, get(off, "luma_correlation", "%.2f"),
      get(off, "classifier_agreement", "%.2f"), get(off, "flicker_static", "%.4f"), on["processed"], on["frames_in"], off["output_fps"]))
EOF
  done
done
