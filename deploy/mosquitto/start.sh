#!/bin/sh
# The broker's command in deploy/compose.yaml: Mosquitto with the generated config ($1).
#
# Mosquitto exits at every start when its persistence file is damaged, as a power cut during a save
# can leave it (eclipse-mosquitto/mosquitto#2639, #3160), and `restart: unless-stopped` would then
# keep the broker, and every reading, down until someone deletes the file. So when Mosquitto fails
# within STARTUP_S of its start and a persistence file exists, the file is kept aside (for
# inspection) and Mosquitto is started once more without it. If that run starts, the file was the
# cause, and what it held (offline sessions, their queued messages) is lost as in a broker crash
# (docs/reliability.md). If it fails as fast, the file is put back and the error stands.
# POSIX sh: the image's is BusyBox ash, which tests/deploy/test_compose_smoke.py runs it with (Debian's busybox).
set -u
conf=${1:-/mosquitto/config/mosquitto.conf}
location=$(sed -n 's/^persistence_location //p' "$conf")
db="${location:-/mosquitto/data/}mosquitto.db"
STARTUP_S=10

# Mosquitto as a child, so that this shell sees how it ends; SIGTERM and SIGINT are passed on (on
# SIGTERM it saves its database). A wait that a trapped signal ends is waited again.
run() {
    mosquitto -c "$conf" &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
    while :; do
        wait "$pid"
        status=$?
        kill -0 "$pid" 2>/dev/null || return "$status"
    done
}

failed_at_start() {  # status, start time
    [ "$1" -ne 0 ] && [ $(($(date +%s) - $2)) -lt "$STARTUP_S" ]
}

started=$(date +%s)
run
status=$?
if ! failed_at_start "$status" "$started" || [ ! -e "$db" ]; then
    exit "$status"
fi
aside="$db.damaged-$(date -u +%Y%m%dT%H%M%SZ)"
mv "$db" "$aside" || exit "$status"
echo "smartcity: mosquitto exited ($status) at start; starting it without its persistence file, kept as $aside: if it now starts, that file was damaged, and the offline sessions and queued messages it held are lost" >&2
started=$(date +%s)
run
status=$?
if failed_at_start "$status" "$started" && [ ! -e "$db" ]; then
    mv "$aside" "$db"
    echo "smartcity: mosquitto fails without its persistence file too: put it back as $db" >&2
fi
exit "$status"
