#!/usr/bin/env bash
# make services: what `func start` needs beside it — a mongod replica set (started empty every
# time) and the Event Grid-compatible receiver — on fixed ports, and a local.settings.json that
# points at them. Ctrl-C, SIGTERM, SIGHUP or a closed output pipe stops both
# (scripts/lib/stack.sh says how).
#
# Ports MONGOD_PORT (7073) and RECEIVER_PORT (7072) must be free; `func start` itself takes 7071.
# LOCAL_SETTINGS (local.settings.json) is written from local.settings.json.example unless it
# exists; an existing file is never overwritten (the script says what to change in it).
# SERVICES_DIR (.local/services) holds the replica set, the receiver's log and the pids.
# RUN_SKIP_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/stack.sh

MONGOD_PORT="${MONGOD_PORT:-7073}"
RECEIVER_PORT="${RECEIVER_PORT:-7072}"
SETTINGS="${LOCAL_SETTINGS:-local.settings.json}"
STACK_DIR="${SERVICES_DIR:-.local/services}"

stack_require_free_port "$MONGOD_PORT" "mongod" MONGOD_PORT
stack_require_free_port "$RECEIVER_PORT" "the Event Grid receiver" RECEIVER_PORT

if [[ "${RUN_SKIP_BUILD:-}" != 1 ]]; then
  echo "==> building"
  cargo build --locked -p devstack -p eventgrid-receiver --bins
fi

stack_init
echo "==> starting mongod (replica set rs0, empty) on port $MONGOD_PORT"
stack_mongod_start --port "$MONGOD_PORT"

echo "==> starting the Event Grid receiver on port $RECEIVER_PORT"
stack_start receiver ./target/debug/eventgrid-receiver --port "$RECEIVER_PORT" \
  > "$STACK_DIR/receiver.log" 2>&1
stack_wait_listening "the receiver" "$started_pid" "$RECEIVER_PORT"

endpoint="http://127.0.0.1:$RECEIVER_PORT/api/events"
# Prints what happened to the settings file: written, already right, or left alone.
settings_note="$(python3 - "$SETTINGS" "$MONGODB_URI" "$endpoint" <<'PY'
import json, os, sys
path, uri, endpoint = sys.argv[1:]
wanted = {"MONGODB_URI": uri, "EVENTGRID_TOPIC_ENDPOINT": endpoint, "EVENTGRID_TOPIC_KEY": "local-dev-key"}
if os.path.exists(path):
    with open(path) as f:
        values = json.load(f).get("Values", {})
    wrong = {k: v for k, v in wanted.items() if values.get(k) != v}
    if not wrong:
        print(f"{path} already points at these services")
    else:
        lines = "\n".join(f'      "{k}": "{v}",' for k, v in wrong.items())
        print(f"warning: {path} exists and was left as it is; for these services set in its Values:\n{lines}\n"
              f"    (or delete it and run make services again to write it from local.settings.json.example)")
else:
    with open("local.settings.json.example") as f:
        settings = json.load(f)
    settings["Values"].update(wanted)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")
    print(f"{path} written from local.settings.json.example, pointing at these services")
PY
)"

say "
Services for func start are running.
  MongoDB        $MONGODB_URI   (replica set rs0, empty at every start)
  Event Grid     $endpoint   (key local-dev-key; fault injection under /_receiver/, see the README)
  $settings_note

In another terminal, from this directory:
  make package && func start      # the Functions host listens on 7071
  curl -s http://127.0.0.1:$RECEIVER_PORT/_receiver/events      # the events, as Event Grid received them

Ctrl-C stops both."
stack_wait
