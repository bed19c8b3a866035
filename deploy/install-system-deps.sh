#!/usr/bin/env bash
# Installs the Debian packages smartcity runs on (the broker, the database, their
# command-line clients). A no-op when they are already present.
set -euo pipefail

needed=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || needed+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || needed+=(mosquitto-clients)
# The broker plugin that ties client ids to accounts (deploy/mosquitto/) is compiled against these headers.
command -v cc >/dev/null 2>&1 || needed+=(gcc libc6-dev)
[ -f /usr/include/mosquitto_broker.h ] || needed+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || needed+=(libmosquitto-dev)
command -v influxd >/dev/null 2>&1 || needed+=(influxdb)
command -v influx >/dev/null 2>&1 || needed+=(influxdb-client)
# Test only: `smartcity report` pages are checked in a headless browser (tests/deploy/test_report_browser.py).
[ -x /usr/bin/chromium ] || needed+=(chromium)
# A Thai font, so the report (and a browser on this machine) draws Thai district names, not boxes.
[ -d /usr/share/fonts/truetype/tlwg ] || needed+=(fonts-thai-tlwg)
# Test only: Grafana's alert templates are run by Go's own text/template (tests/dashboards/test_go_templates.py).
command -v go >/dev/null 2>&1 || needed+=(golang-go)
# Test only: the broker image's command (deploy/mosquitto/start.sh) runs with BusyBox's sh, as in the
# image (tests/deploy/test_compose_smoke.py).
command -v busybox >/dev/null 2>&1 || needed+=(busybox)
for extra in "$@"; do
    command -v "$extra" >/dev/null 2>&1 || needed+=("$extra")
done

if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root or sudo to install: ${needed[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "install-system-deps: installing ${needed[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Package scripts try to start services; on machines without systemd that is a harmless no-op.
$sudo apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
