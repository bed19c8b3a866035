"""Broker accounts and ACLs derived from the sensor registry.

Every vendor of the registry gets a broker user named after its vendor id. It
may publish only to its own sensors' topics and read only its own sensors'
reject topics, so one vendor can neither impersonate another's sensor nor read
another's readings or rejections:

    user siam-airsense
    topic write smartcity/v1/phuket/air_quality/pkt-aq-001
    topic read smartcity/dlq/v1/phuket/air_quality/pkt-aq-001
    ...

The platform's own users come from `broker_auth.service_acl_rules()`: `ingest`
reads every reading and writes the reject topics, `admin` does anything. A new
vendor or sensor in the registry is a new account or ACL line on the next
`smartcity stack up` or `smartcity sensors acl`; no code changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from deploy import broker_auth
from deploy.broker_auth import AclRule
from sensors.cli import home_option, registry_from, registry_option, sensors_group
from sensors.contract import REJECT_PREFIX
from sensors.errors import SmartcityError
from sensors.home import Home
from sensors.registry import Registry

PASSWORD_FILE = "passwd"
# Client ids the platform's own processes use by default (ingest's, the compose ingest services'): a
# vendor account may use `<vendor>` and `<vendor>-...`, so no vendor id may be their prefix.
RESERVED_CLIENT_IDS = ("smartcity-ingest", "ingest-a", "ingest-b")
ACL_FILE = "acl"


class AclError(SmartcityError):
    """The registry cannot be turned into broker accounts (e.g. a vendor id that is a platform user)."""


def vendor_acl_rules(registry: Registry) -> dict[str, list[AclRule]]:
    """Per vendor: write its sensors' reading topics, read their reject topics (sorted, one line each)."""
    rules: dict[str, list[AclRule]] = {}
    for vendor in sorted(registry.vendors):
        if vendor in broker_auth.service_acl_rules():
            raise AclError(
                f"vendor id {vendor!r} in the registry is also a platform broker user; rename the vendor "
                f"(reserved: {', '.join(sorted(broker_auth.service_acl_rules()))})"
            )
        owner = next((v for v in registry.vendors if vendor.startswith(f"{v}-")), None)
        if owner is not None:
            raise AclError(
                f"vendor id {vendor!r} lies in the client-id namespace of vendor {owner!r} ({owner}-...), "
                f"so {owner!r} could take over its sessions; rename one of them"
            )
        if any(reserved.startswith(f"{vendor}-") for reserved in RESERVED_CLIENT_IDS):
            raise AclError(f"vendor id {vendor!r} would own the platform's client ids {vendor}-...; rename the vendor")
        sensors = sorted(registry.sensors_of(vendor=vendor), key=lambda s: s.id)
        rules[vendor] = [AclRule("write", s.topic) for s in sensors] + [
            AclRule("read", f"{REJECT_PREFIX}{s.city}/{s.kind}/{s.id}") for s in sensors
        ]
    return rules


def registry_acl_rules(registry: Registry) -> dict[str, list[AclRule]]:
    """Every broker user of a deployment: admin, ingest and one per vendor of the registry."""
    return {**broker_auth.service_acl_rules(), **vendor_acl_rules(registry)}


def write_broker_files(registry: Registry, out_dir: Path, passwords_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Write `out_dir/passwd` (hashed) and `out_dir/acl`; plain passwords are kept in `passwords_path` (0600).

    Existing passwords are reused, so regenerating the files never locks out a
    vendor; users missing from `passwords_path` get a fresh random one.
    """
    rules = registry_acl_rules(registry)
    try:
        passwords = broker_auth.load_or_create_passwords(passwords_path, rules)
    except ValueError as err:
        raise AclError(f"{passwords_path}: not a JSON object of user -> password: {err}") from err
    except OSError as err:
        raise AclError(f"{passwords_path}: {err.strerror or err}") from err
    users = {user: passwords[user] for user in rules}
    password_file, acl_file = out_dir / PASSWORD_FILE, out_dir / ACL_FILE
    try:
        broker_auth.write_private(password_file, broker_auth.render_password_file(users))
        broker_auth.write_private(acl_file, broker_auth.render_acl_file(rules))
    except OSError as err:
        raise AclError(f"--out {out_dir}: cannot write the broker files: {err.strerror or err}") from err
    return password_file, acl_file, users


@click.command("acl")
@registry_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the Mosquitto files 'passwd' (hashed) and 'acl' (created if missing).",
)
@home_option("plain broker passwords are kept in HOME/secrets/mqtt-users.json")
def acl_command(registry_paths: Sequence[Path], out_dir: Path, home: Path) -> None:
    """Write Mosquitto password and ACL files: one account per vendor, limited to its own sensors.

    Point mosquitto.conf at them with 'password_file OUT/passwd' and 'acl_file OUT/acl'
    (a running Mosquitto rereads both on SIGHUP).
    """
    registry = registry_from(registry_paths)
    secrets = Home(home).broker_passwords
    password_file, acl_file, users = write_broker_files(registry, out_dir, secrets)
    vendors = len(users) - len(broker_auth.service_acl_rules())
    click.echo(f"wrote {password_file} and {acl_file}: {len(users)} users ({vendors} vendors); passwords in {secrets}")


# `smartcity sensors acl` beside `list` and `show`: the group lives in `sensors`, which may not import deploy.
sensors_group.add_command(acl_command)
