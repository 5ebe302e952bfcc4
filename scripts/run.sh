#!/usr/bin/env bash
# make run: a real local stack — a mongod replica set (started empty every time), the Event
# Grid-compatible receiver and `handler serve` — in the foreground. Ctrl-C, SIGTERM, SIGHUP or a
# closed output pipe stops everything this script started (scripts/lib/stack.sh says how).
#
# Ports HANDLER_PORT (7071) and RECEIVER_PORT (7072) must be free; mongod takes a free port.
# RUN_DIR (.local/run) holds the replica set, the logs, the receiver's record file and the pids.
# RUN_SKIP_BUILD=1 skips the build (the tests set it: they have built everything already).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/stack.sh

HANDLER_PORT="${HANDLER_PORT:-7071}"
RECEIVER_PORT="${RECEIVER_PORT:-7072}"
STACK_DIR="${RUN_DIR:-.local/run}"
dir="$STACK_DIR"

# Before anything starts: a taken port would otherwise be answered by the other process.
stack_require_free_port "$HANDLER_PORT" "handler serve" HANDLER_PORT
stack_require_free_port "$RECEIVER_PORT" "the Event Grid receiver" RECEIVER_PORT

if [[ "${RUN_SKIP_BUILD:-}" != 1 ]]; then
  echo "==> building"
  cargo build --locked --workspace --bins
fi

stack_init
echo "==> starting mongod (replica set rs0, empty)"
stack_mongod_start

echo "==> starting the Event Grid receiver on port $RECEIVER_PORT"
: > "$dir/events.jsonl"
stack_start receiver ./target/debug/eventgrid-receiver --port "$RECEIVER_PORT" \
  --record "$dir/events.jsonl" > "$dir/receiver.log" 2>&1
stack_wait_listening "the receiver" "$started_pid" "$RECEIVER_PORT"

echo "==> starting handler serve on port $HANDLER_PORT"
# Its output goes to files shown here, never straight to this script's output (stack.sh: why).
stack_show_log "$dir/handler.log"
stack_show_log "$dir/handler.err.log" >&2
MONGODB_URI="$MONGODB_URI" \
EVENTGRID_TOPIC_ENDPOINT="http://127.0.0.1:$RECEIVER_PORT/api/events" \
EVENTGRID_TOPIC_KEY="local-dev-key" \
OUTBOX_SCHEDULE="${OUTBOX_SCHEDULE:-*/5 * * * * *}" \
  stack_start handler ./target/debug/handler serve --port "$HANDLER_PORT" \
  > "$dir/handler.log" 2> "$dir/handler.err.log"
# The handler, not another process on the port, must be the one answering.
stack_wait_listening "handler serve" "$started_pid" "$HANDLER_PORT"

say "
outbox-relay is running.
  MongoDB        $MONGODB_URI   (database \"outbox\", empty at every start)
  Event Grid     http://127.0.0.1:$RECEIVER_PORT/api/events   (key local-dev-key)
  handler        http://127.0.0.1:$HANDLER_PORT   (drains every 5 s; OUTBOX_SCHEDULE to change)

Write a document:
  curl -i -X POST http://127.0.0.1:$HANDLER_PORT/api/documents \\
       -H 'Content-Type: application/json' -d '{\"_id\":\"order-1\",\"total\":129.5}'

Watch the event arrive:
  curl -s http://127.0.0.1:$RECEIVER_PORT/_receiver/events      # or: tail -f $dir/events.jsonl
Drain now instead of waiting:
  curl -s -X POST http://127.0.0.1:$HANDLER_PORT/admin/functions/OutboxTimer
Outbox state:
  MONGODB_URI='$MONGODB_URI' ./target/debug/handler outbox status
Make Event Grid fail the next 3 requests (more in the README, \"The local Event Grid receiver\"):
  curl -s -X POST http://127.0.0.1:$RECEIVER_PORT/_receiver/faults -d '{\"fail\":{\"count\":3,\"status\":503}}'

Ctrl-C stops everything."
stack_wait
