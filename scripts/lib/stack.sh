# Sourced by scripts/run.sh and scripts/services.sh: start local processes so that everything
# started is stopped again, however the script ends and however its output is piped.
#
# - Each child runs in a session (and process group) of its own (`setsid`), so a terminal's
#   Ctrl-C reaches only this script (and `tee`), which then stops the children in order: no
#   child sees two signals, and a child's own children go with its group.
# - Traps on INT, TERM, HUP, PIPE and EXIT run one cleanup: SIGTERM to every child's group,
#   a deadline (STOP_DEADLINE_SECS, default 10 s), then SIGKILL; then the replica set is stopped
#   by its recorded pid. The cleanup ignores SIGPIPE and further signals: with
#   `make run | tee log`, Ctrl-C kills `tee` too, and a cleanup that writes to the closed pipe
#   used to die there, leaving `mongod` (and sometimes the handler) running.
# - A child may write to files that `tail` shows (stack_show_log) rather than to the script's
#   output: `handler serve` whose output pipe has closed (Ctrl-C kills `tee` too) ignores
#   SIGTERM, while `tail` simply dies of the closed pipe, which in turn stops the stack.
# - Every pid is recorded in STACK_DIR/pids (`name pid` lines) for tests and for the curious.
#
# Usage: STACK_DIR=dir; stack_require_free_port PORT WHAT SETTING; stack_init; stack_mongod_start
# [--port P]; stack_show_log FILE [>&2]; stack_start NAME cmd…; stack_wait_listening NAME PID
# PORT; stack_wait.

STOP_DEADLINE_SECS="${STOP_DEADLINE_SECS:-10}"
stack_names=()
stack_pids=()
stack_log_pids=()
stack_mongod_dir=""

# Writes a line; fine when nobody reads it any more (the pipe to `tee` closed).
say() { printf '%s\n' "$*" 2>/dev/null || true; }
fail() {
  printf '%s\n' "$*" >&2 2>/dev/null || true
  exit 1
}

stack_init() {
  mkdir -p "$STACK_DIR"
  : > "$STACK_DIR/pids"
  trap 'stack_stop 130' INT
  trap 'stack_stop 143' TERM
  trap 'stack_stop 129' HUP
  trap 'stack_stop 141' PIPE
  trap 'stack_stop' EXIT
}

# Whether process $1 runs (an exited child not reaped yet, a zombie, does not).
is_running() {
  [[ -e /proc/$1 && "$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null)" != Z ]]
}

# Inodes of the sockets listening on TCP port $1 (IPv4 and IPv6), one per line.
listening_inodes() {
  local hex
  hex="$(printf ':%04X' "$1")"
  awk -v port="$hex" '$4 == "0A" && substr($2, length($2) - 4) == port { print $10 }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Whether process $1 holds a socket listening on TCP port $2: it, not another process, answers.
pid_listens_on() {
  local pid="$1" inode fd
  for inode in $(listening_inodes "$2"); do
    for fd in /proc/"$pid"/fd/*; do
      [[ "$(readlink "$fd" 2>/dev/null)" == "socket:[$inode]" ]] && return 0
    done
  done
  return 1
}

# Who listens on port $1, as far as this user can tell: "pid N (command)" or "another process".
port_owner() {
  local owner
  owner="$(ss -Hltnp "( sport = :$1 )" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
  if [[ -n "$owner" ]]; then
    echo "pid $owner ($(cat /proc/"$owner"/comm 2>/dev/null || echo '?'))"
  else
    echo "another process"
  fi
}

# Fails loudly when TCP port $1 is taken; $2 says what needs it, $3 the variable that moves it.
stack_require_free_port() {
  if [[ -n "$(listening_inodes "$1")" ]]; then
    fail "error: port $1 ($2) is already in use by $(port_owner "$1"); stop that process or choose another port with $3=…"
  fi
}

# Starts NAME ($1) as `cmd…` in a session of its own, in the background; sets `started_pid`.
stack_start() {
  local name="$1"
  shift
  setsid "$@" &
  started_pid=$!
  stack_names+=("$name")
  stack_pids+=("$started_pid")
  echo "$name $started_pid" >> "$STACK_DIR/pids"
}

# Shows FILE ($1) on this script's output as it grows (redirect the call to show it on stderr);
# stopped after the other children, so their last lines are shown.
stack_show_log() {
  : > "$1"
  setsid tail -n +1 -F "$1" 2>/dev/null &
  stack_log_pids+=($!)
  echo "log:$(basename "$1") $!" >> "$STACK_DIR/pids"
}

# Starts a fresh replica set in STACK_DIR/mongod (extra arguments go to `devstack mongod
# start`); sets MONGODB_URI.
stack_mongod_start() {
  stack_mongod_dir="$STACK_DIR/mongod"
  # A replica set left over from an interrupted run is stopped first (by its recorded pid).
  ./target/debug/devstack mongod stop --dir "$stack_mongod_dir" 2>/dev/null || true
  MONGODB_URI="$(./target/debug/devstack mongod start --dir "$stack_mongod_dir" "$@")"
  echo "mongod $(cat "$stack_mongod_dir/mongod.pid")" >> "$STACK_DIR/pids"
}

# Waits until NAME ($1, pid $2) listens on port $3 and answers HTTP there; fails loudly when it
# exits first (typically: the port was taken meanwhile) or takes longer than 30 s.
stack_wait_listening() {
  local name="$1" pid="$2" port="$3" _
  for _ in $(seq 1 300); do
    if ! is_running "$pid"; then
      sleep 0.3 # its last lines reach the output first (stack_show_log)
      fail "error: $name exited before it listened on port $port$( [[ -n "$(listening_inodes "$port")" ]] && echo " (the port is taken by $(port_owner "$port"))"); see its output above"
    fi
    if pid_listens_on "$pid" "$port" && curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
      return 0
    fi
    sleep 0.1
  done
  fail "error: $name (pid $pid) did not answer on port $port within 30 s"
}

# Returns when any child exits (then the EXIT trap stops the others), or on a signal.
stack_wait() {
  local status=0
  wait -n "${stack_pids[@]}" "${stack_log_pids[@]}" || status=$?
  say "error: a process of the stack exited on its own (status $status); stopping the others"
  exit "$((status == 0 ? 1 : status))"
}

# The one cleanup; $1 is the exit status (the signal's, for a trap).
stack_stop() {
  local status="${1:-$?}" i pid alive _
  trap '' INT TERM HUP PIPE
  trap - EXIT
  set +e
  if ((${#stack_pids[@]} == 0)) && [[ -z "$stack_mongod_dir" ]]; then
    exit "$status"
  fi
  say
  say "==> stopping"
  # Newest first: the handler stops before the receiver it publishes to.
  for ((i = ${#stack_pids[@]} - 1; i >= 0; i--)); do
    kill -TERM -- "-${stack_pids[i]}" 2>/dev/null || kill -TERM "${stack_pids[i]}" 2>/dev/null
  done
  for _ in $(seq 1 $((STOP_DEADLINE_SECS * 10))); do
    alive=0
    for pid in "${stack_pids[@]}"; do
      is_running "$pid" && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for i in "${!stack_pids[@]}"; do
    pid="${stack_pids[i]}"
    if is_running "$pid"; then
      say "${stack_names[i]} (pid $pid) still running ${STOP_DEADLINE_SECS} s after SIGTERM; SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
  done
  for pid in "${stack_pids[@]}"; do wait "$pid" 2>/dev/null; done
  if ((${#stack_log_pids[@]} > 0)); then
    sleep 0.3 # `tail` shows the last lines first
    kill -KILL "${stack_log_pids[@]}" 2>/dev/null
    wait "${stack_log_pids[@]}" 2>/dev/null
  fi
  if [[ -n "$stack_mongod_dir" ]]; then
    ./target/debug/devstack mongod stop --dir "$stack_mongod_dir" >/dev/null 2>&1
  fi
  say "==> stopped"
  exit "$status"
}
