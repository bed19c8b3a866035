#!/bin/sh
# Mosquitto reads its password and ACL files after it drops to user mosquitto, and the mounted ones
# are private to their owner on the host (0600): give it copies of its own, then start it.
set -eu
install -d -o mosquitto -g mosquitto -m 700 /mosquitto/secrets
for name in passwd acl; do
    install -o mosquitto -g mosquitto -m 600 "/mosquitto/config/$name" "/mosquitto/secrets/$name"
done
exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
