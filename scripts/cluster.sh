#!/usr/bin/env bash
# Several `gen serve` replicas on this machine behind nginx, with stream affinity (docs/DEPLOY.md).
#
#   scripts/cluster.sh up N PORT     start replicas r1..rN on 127.0.0.1:PORT+1..PORT+N and nginx on
#                                    PORT; returns when all of them answer (UP_TIMEOUT s, default 60)
#   scripts/cluster.sh pids          the replicas' process ids, one per line (live ones only)
#   scripts/cluster.sh status        replicas (name, port, pid, alive) and nginx
#   scripts/cluster.sh down          stop nginx and the replicas this script started (idempotent)
#   scripts/cluster.sh check [PORT]  up 3 PORT (default 18480), scripts/cluster_check.py, down
#   scripts/cluster.sh render PORT HOST:PORT...
#                                    print deploy/nginx.conf.template filled in for replicas r1, r2,
#                                    ... at those addresses (replicas on other machines)
#
# Environment:
#   GEN            the gen binary (default: .build/release/gen in the repository, built with
#                  `swift build -c release` when missing)
#   MILLRACE_TOKEN passed to the replicas: every /v1 request then needs `Authorization: Bearer ...`
#   REPLICA_ARGS   more `gen serve` flags for every replica, e.g. "--threads 1 --max-streams 4"
#   ALLOW_HOST     a name clients use to reach nginx (given to the replicas as --allow-host)
#   LISTEN         address nginx listens on (default 127.0.0.1; another one needs MILLRACE_TOKEN)
#   CLUSTER_STATE  folder of pids, logs and nginx's files (default: .build-cluster in the repository)
#   UP_TIMEOUT     seconds `up` waits for the replicas and nginx (default 60)
#
# Works from any folder: the replicas run in the repository (web-static/, assets/models/).
set -euo pipefail

caller_dir=$PWD
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
state=${CLUSTER_STATE:-$repo/.build-cluster}
case "$state" in /*) ;; *) state=$caller_dir/$state ;; esac
template=$repo/deploy/nginx.conf.template
max_body=8388608   # gen serve's default --max-body

die() { echo "cluster.sh: $*" >&2; exit 1; }

# A replica's record in $state/replicas: "NAME PORT PID" per line.
# Whether PID is a live `gen serve --instance NAME` (guards against a reused pid).
is_replica() {
  local pid=$1 name=$2 cmd
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ " $cmd " == *" serve "* && " $cmd " == *" --instance $name "* ]]
}

# Whether PID exists and is not a zombie (exited, not yet reaped).
alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

nginx_bin() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || return 1
}

# Whether PID is the nginx master started with our prefix.
is_our_nginx() {
  local pid=$1 cmd
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *nginx* && "$cmd" == *"$state/nginx"* ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

answers() { curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$1/healthz"; }

# render PREFIX LISTEN ADDR...: the template filled in, on stdout.
render() {
  local prefix=$1 listen=$2; shift 2
  [ -r "$template" ] || die "missing $template"
  local all="" ups="" routes="" i=0 addr
  for addr in "$@"; do
    i=$((i + 1))
    all+="        server $addr max_fails=2 fail_timeout=10s;"$'\n'
    ups+="    upstream millrace_r$i { server $addr; keepalive 8; keepalive_timeout 10s; }"$'\n'
    routes+="        \"~^/v1/streams/r$i-[0-9a-f]{8}-s[0-9]+(/|\$)\" millrace_r$i;"$'\n'
  done
  local line header=1
  echo "# Made by scripts/cluster.sh from deploy/nginx.conf.template (which explains it): $# replica(s)."
  while IFS= read -r line || [ -n "$line" ]; do
    if [ $header = 1 ]; then   # the template's opening comment is about its placeholders
      [[ "$line" == "#"* ]] && continue
      header=0
    fi
    case "$line" in
      @@ALL_SERVERS@@) printf '%s' "$all" ;;
      @@REPLICA_UPSTREAMS@@) printf '%s' "$ups" ;;
      @@STREAM_ROUTES@@) printf '%s' "$routes" ;;
      *) line=${line//@@PREFIX@@/$prefix}; line=${line//@@LISTEN@@/$listen}
         line=${line//@@MAX_BODY@@/$max_body}; printf '%s\n' "$line" ;;
    esac
  done < "$template"
}

# cmd_down [own]: "own" when called by the `up` that started the replicas, whose pids are surely
# theirs (a replica may not have exec'd gen yet, so its command line is still this script's).
cmd_down() {
  local own=${1:-} stopped=0 pid name port
  if [ -f "$state/nginx/nginx.pid" ]; then
    pid=$(cat "$state/nginx/nginx.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && is_our_nginx "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true   # fast shutdown: open stream outputs are cut
      for _ in $(seq 50); do is_our_nginx "$pid" || break; sleep 0.1; done
      is_our_nginx "$pid" && kill -KILL "$pid" 2>/dev/null || true
      echo "cluster.sh: nginx ($pid) stopped"
      stopped=1
    fi
    rm -f "$state/nginx/nginx.pid"
  fi
  if [ -f "$state/replicas" ]; then
    local live=()
    while read -r name port pid; do
      if is_replica "$pid" "$name" || { [ "$own" = own ] && alive "$pid"; }; then
        kill -TERM "$pid" 2>/dev/null || true   # gen serve exits within 5 s
        live+=("$pid:$name")
      fi
    done < "$state/replicas"
    local entry
    for _ in $(seq 60); do
      local any=0
      for entry in "${live[@]+"${live[@]}"}"; do
        if is_replica "${entry%%:*}" "${entry#*:}" || { [ "$own" = own ] && alive "${entry%%:*}"; }; then any=1; fi
      done
      [ $any = 0 ] && break
      sleep 0.1
    done
    for entry in "${live[@]+"${live[@]}"}"; do
      if is_replica "${entry%%:*}" "${entry#*:}" || { [ "$own" = own ] && alive "${entry%%:*}"; }; then
        kill -KILL "${entry%%:*}" 2>/dev/null || true
        echo "cluster.sh: replica ${entry#*:} (${entry%%:*}) did not stop in 6 s: killed" >&2
      fi
    done
    [ ${#live[@]} -gt 0 ] && { echo "cluster.sh: ${#live[@]} replica(s) stopped"; stopped=1; }
    rm -f "$state/replicas"
  fi
  [ $stopped = 1 ] || echo "cluster.sh: nothing running"
}

cmd_up() {
  [ $# -eq 2 ] || die "usage: scripts/cluster.sh up N PORT"
  local n=$1 port=$2
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 64 ] || die "N must be 1 to 64 (got '$n')"
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ $((port + n)) -le 65535 ] || die "bad PORT '$port'"
  local listen=${LISTEN:-127.0.0.1} timeout=${UP_TIMEOUT:-60}
  case "$listen" in
    127.*|localhost|"[::1]") ;;
    *) [ -n "${MILLRACE_TOKEN:-}" ] || die "LISTEN=$listen reaches beyond this machine: set MILLRACE_TOKEN (docs/DEPLOY.md)" ;;
  esac
  local nginx
  nginx=$(nginx_bin) || die "nginx not found: install it (apt-get install nginx, or scripts/install-deps.sh)"
  command -v curl > /dev/null || die "curl not found (scripts/install-deps.sh)"

  local gen=${GEN:-}
  if [ -n "$gen" ]; then
    case "$gen" in /*) ;; *) gen=$caller_dir/$gen ;; esac
    [ -x "$gen" ] || die "GEN=$gen is not an executable"
  else
    gen=$repo/.build/release/gen
    if [ ! -x "$gen" ]; then
      echo "cluster.sh: $gen missing; building: swift build -c release" >&2
      PATH="/opt/swift/usr/bin:$PATH" swift build -c release >&2
    fi
  fi

  if [ -f "$state/replicas" ] || [ -f "$state/nginx/nginx.pid" ]; then
    local running=0 name p pid
    [ -f "$state/nginx/nginx.pid" ] && is_our_nginx "$(cat "$state/nginx/nginx.pid")" && running=1
    if [ -f "$state/replicas" ]; then
      while read -r name p pid; do is_replica "$pid" "$name" && running=1; done < "$state/replicas"
    fi
    [ $running = 0 ] || die "already up (state in $state): run scripts/cluster.sh down first"
    rm -f "$state/replicas" "$state/nginx/nginx.pid"
  fi
  local i
  for i in $(seq 0 "$n"); do
    ! port_in_use $((port + i)) || die "port $((port + i)) is in use (nginx takes PORT, replicas PORT+1..PORT+N)"
  done

  mkdir -p "$state/nginx/tmp"
  : > "$state/replicas"
  # From here on, a failure stops what was started.
  fail() { echo "cluster.sh: $*" >&2; echo "cluster.sh: up failed; stopping what it started" >&2; cmd_down own >&2; exit 1; }
  local extra=() allow=()
  [ -n "${REPLICA_ARGS:-}" ] && read -r -a extra <<< "$REPLICA_ARGS"
  [ -n "${ALLOW_HOST:-}" ] && allow=(--allow-host "$ALLOW_HOST")
  [ -n "${MILLRACE_TOKEN:-}" ] && export MILLRACE_TOKEN
  local addrs=()
  for i in $(seq 1 "$n"); do
    local p=$((port + i))
    "$gen" serve --port "$p" --instance "r$i" "${allow[@]+"${allow[@]}"}" "${extra[@]+"${extra[@]}"}" \
      < /dev/null > "$state/r$i.log" 2>&1 &
    disown $!   # no "Killed" notice from this shell when `check` kills one
    echo "r$i $p $!" >> "$state/replicas"
    addrs+=("127.0.0.1:$p")
  done

  local deadline=$((SECONDS + timeout)) name pid pending
  while :; do
    pending=0
    while read -r name p pid; do
      if ! alive "$pid"; then   # our own child: no reused pid yet
        tail -n 5 "$state/$name.log" >&2
        fail "replica $name (port $p) exited; above: the end of $state/$name.log"
      fi
      answers "$p" || pending=1
    done < "$state/replicas"
    [ $pending = 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
      fail "replicas not answering /healthz after ${timeout} s (logs: $state/r*.log)"
    fi
    sleep 0.2
  done

  render "$state/nginx" "$listen:$port" "${addrs[@]}" > "$state/nginx/nginx.conf"
  "$nginx" -t -q -p "$state/nginx" -c "$state/nginx/nginx.conf" -e "$state/nginx/error.log" \
    || fail "nginx refused $state/nginx/nginx.conf"
  "$nginx" -p "$state/nginx" -c "$state/nginx/nginx.conf" -e "$state/nginx/error.log" \
    < /dev/null > "$state/nginx/start.log" 2>&1 \
    || { cat "$state/nginx/start.log" >&2; fail "nginx did not start (above: its output)"; }
  local host=$listen
  case "$listen" in 0.0.0.0|"*"|"[::]") host=127.0.0.1 ;; esac
  until curl -sf --max-time 2 -o /dev/null "http://$host:$port/healthz"; do
    if [ $SECONDS -ge $deadline ]; then
      tail -n 5 "$state/nginx/error.log" >&2
      fail "nginx not answering on $host:$port after ${timeout} s (above: the end of $state/nginx/error.log)"
    fi
    sleep 0.2
  done
  echo "cluster.sh: $n replica(s) on 127.0.0.1:$((port + 1))..$((port + n)), nginx on http://$host:$port/ (state: $state)"
}

cmd_pids() {
  [ -f "$state/replicas" ] || return 0
  local name port pid
  while read -r name port pid; do
    if is_replica "$pid" "$name"; then echo "$pid"; fi
  done < "$state/replicas"
}

cmd_status() {
  local name port pid
  if [ -f "$state/replicas" ]; then
    while read -r name port pid; do
      if is_replica "$pid" "$name"; then echo "$name 127.0.0.1:$port pid $pid alive"
      else echo "$name 127.0.0.1:$port pid $pid gone"; fi
    done < "$state/replicas"
  else
    echo "no replicas"
  fi
  pid=$(cat "$state/nginx/nginx.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && is_our_nginx "$pid"; then echo "nginx pid $pid ($state/nginx/nginx.conf)"; else echo "no nginx"; fi
}

cmd_check() {
  local port=${1:-18480} rc=0
  cmd_up 3 "$port"
  python3 "$repo/scripts/cluster_check.py" --port "$port" --pids "bash $repo/scripts/cluster.sh pids" || rc=$?
  cmd_down
  return $rc
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  pids) cmd_pids ;;
  status) cmd_status ;;
  check) shift; cmd_check "$@" ;;
  render)
    shift
    [ $# -ge 2 ] || die "usage: scripts/cluster.sh render PORT HOST:PORT..."
    p=$1; shift
    render "$state/nginx" "${LISTEN:-127.0.0.1}:$p" "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
