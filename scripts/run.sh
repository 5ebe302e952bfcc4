#!/usr/bin/env bash
# make run: a real local stack — a mongod replica set, the Event Grid-compatible receiver and
# `handler serve` — in the foreground. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

HANDLER_PORT="${HANDLER_PORT:-7071}"
RECEIVER_PORT="${RECEIVER_PORT:-7072}"
dir=".local/run"
mkdir -p "$dir"

echo "==> building"
cargo build --locked --workspace --bins

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ./target/debug/devstack mongod stop --dir "$dir/mongod" 2>/dev/null || true
}
trap cleanup INT TERM EXIT

# A replica set left over from an interrupted run is stopped first (by its recorded pid).
./target/debug/devstack mongod stop --dir "$dir/mongod" 2>/dev/null || true
echo "==> starting mongod (replica set rs0)"
MONGODB_URI="$(./target/debug/devstack mongod start --dir "$dir/mongod")"

echo "==> starting the Event Grid receiver on port $RECEIVER_PORT"
: > "$dir/events.jsonl"
./target/debug/eventgrid-receiver --port "$RECEIVER_PORT" --record "$dir/events.jsonl" \
  > "$dir/receiver.log" 2>&1 &
pids+=($!)

echo "==> starting handler serve on port $HANDLER_PORT"
MONGODB_URI="$MONGODB_URI" \
EVENTGRID_TOPIC_ENDPOINT="http://127.0.0.1:$RECEIVER_PORT/api/events" \
EVENTGRID_TOPIC_KEY="local-dev-key" \
OUTBOX_SCHEDULE="${OUTBOX_SCHEDULE:-*/5 * * * * *}" \
  ./target/debug/handler serve --port "$HANDLER_PORT" &
pids+=($!)

for _ in $(seq 1 200); do
  curl -fs "http://127.0.0.1:$HANDLER_PORT/" >/dev/null 2>&1 && break
  sleep 0.05
done

cat <<EOT

outbox-relay is running.
  MongoDB        $MONGODB_URI   (database "outbox")
  Event Grid     http://127.0.0.1:$RECEIVER_PORT/api/events   (key local-dev-key)
  handler        http://127.0.0.1:$HANDLER_PORT   (drains every 5 s; OUTBOX_SCHEDULE to change)

Write a document:
  curl -i -X POST http://127.0.0.1:$HANDLER_PORT/api/documents \\
       -H 'Content-Type: application/json' -d '{"_id":"order-1","total":129.5}'

Watch the event arrive:
  curl -s http://127.0.0.1:$RECEIVER_PORT/_receiver/events      # or: tail -f $dir/events.jsonl
Drain now instead of waiting:
  curl -s -X POST http://127.0.0.1:$HANDLER_PORT/admin/functions/OutboxTimer
Outbox state:
  MONGODB_URI='$MONGODB_URI' ./target/debug/handler outbox status
Make Event Grid fail the next 3 requests:
  curl -s -X POST http://127.0.0.1:$RECEIVER_PORT/_receiver/faults -d '{"fail":{"count":3,"status":503}}'

Ctrl-C stops everything.
EOT
wait "${pids[@]}"
