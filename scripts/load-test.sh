#!/usr/bin/env bash
# Load test of gen serve on loopback (docs/BENCHMARKS.md): wrk against /v1/generate at rising
# concurrency and against the multipart routes /v1/colorize and /v1/bss, then 8 streams posting 30 frames/s for 60 s with a viewer each; server RSS before
# and after; a graceful SIGTERM at the end must exit 0. Needs wrk (apt-get install wrk) and a
# release build (swift build -c release).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8181}
gen=${GEN:-.build/release/gen}   # GEN=path: another build, e.g. to compare before and after a change
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
$gen serve --port "$port" > /tmp/millrace-load-serve.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.2; done
echo "server pid $pid, RSS at start: $(rss $pid) kB"
cat > /tmp/millrace-post.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"class": 0, "steps": 4, "count": 1, "upscale": 1}'
wrk.headers["Content-Type"] = "application/json"
LUA
for c in ${WRK_CONNECTIONS:-1 2 4 8}; do
  echo "== wrk /v1/generate, $c connections, 15 s"
  wrk -t1 -c"$c" -d15s --latency -s /tmp/millrace-post.lua "http://127.0.0.1:$port/v1/generate" | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors" || true
done
# Multipart routes: /v1/colorize (one 32x32 emoji, the server's reference pool) and /v1/bss
# (4 emoji). wrk sends the same body each time, built once here.
multipart() {  # multipart FILE... -> body on stdout, boundary millraceload; first part "image"
  local first=1
  for f in "$@"; do
    local name=reference; [ $first = 1 ] && name=image && first=0
    [ "${BSS:-0}" = 1 ] && name=image
    printf -- '--millraceload\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\nContent-Type: image/png\r\n\r\n' "$name" "$(basename "$f")"
    cat "$f"; printf '\r\n'
  done
  printf -- '--millraceload--\r\n'
}
pick() { ls assets/references/emoji-"$1"-*.png | head -1; }
multipart "$(pick 3)" > /tmp/millrace-colorize.body
BSS=1 multipart "$(pick 0)" "$(pick 3)" "$(pick 4)" "$(pick 8)" > /tmp/millrace-bss.body
for route in colorize bss; do
  cat > /tmp/millrace-$route.lua <<LUA
local f = io.open("/tmp/millrace-$route.body", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=millraceload"
LUA
  for c in ${WRK_CONNECTIONS_MULTIPART:-1 4}; do
    echo "== wrk /v1/$route, $c connections, 15 s"
    wrk -t1 -c"$c" -d15s --latency -s /tmp/millrace-$route.lua "http://127.0.0.1:$port/v1/$route" | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors" || true
  done
done
echo "RSS after wrk: $(rss $pid) kB"
echo "== 8 streams x 30 frames/s x 60 s, one viewer each"
python3 scripts/load_streams.py --port "$port" --streams 8 --fps 30 --seconds "${SECONDS_STREAMS:-60}"
echo "RSS after streams: $(rss $pid) kB"
curl -s "http://127.0.0.1:$port/metrics" | grep -E "^millrace_(stream|model)" || true
kill -TERM $pid
wait $pid && echo "graceful shutdown: exit code 0"
trap - EXIT
