"""The MQTT ingest service: durable spool, ack-after-disk, reject topic, raw writer."""
