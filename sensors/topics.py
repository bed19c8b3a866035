"""The MQTT topic tree of the contract: readings under `smartcity/v1/`, rejections under `smartcity/dlq/v1/`.

`sensors.contract` parses and builds the topics; the prefixes live apart so that settings and
ACLs can name them without loading the registry.
"""

from __future__ import annotations

TOPIC_PREFIX = "smartcity/v1/"
REJECT_PREFIX = "smartcity/dlq/v1/"
MALFORMED_REJECT_TOPIC = "smartcity/dlq/v1/_malformed"
SUBSCRIPTION = "smartcity/v1/#"
