"""One way to read a time on the command line, for every `smartcity` command.

The rule for a time without a zone: it is the city's clock, Asia/Bangkok (UTC+7, no daylight saving).
Operators read Bangkok time on every Grafana dashboard and report page, and a day in their words
("the 10th") is a Bangkok day; reading it as UTC would shift every range by seven hours. Anything with
`Z` or an offset means exactly what it says, and stored data stays in UTC.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import click

CITY_TZ: tzinfo = ZoneInfo("Asia/Bangkok")
TIME_RULE = "Bangkok time (UTC+7) unless it ends in Z or an offset; also now, now-6h or epoch ms"

_RELATIVE = re.compile(r"^now(?:-(\d+(?:\.\d+)?)([smhd]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EXAMPLES = "2026-03-01, 2026-03-01T08:00, 2026-03-01T01:00Z or now-6h"
_EPOCH_MS = re.compile(r"^\d{10,}$")  # 8 digits would be a date (20260301); epoch ms has 12-13 today


class TimeError(ValueError):
    """The text is not a time this module reads."""


def parse_time(text: str, now_s: float | None = None) -> datetime:
    """`2026-03-01`, `2026-03-01T08:00`, `...Z`, `...+07:00`, `now`, `now-6h` or epoch ms, as an aware UTC time."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        back_s = float(relative[1] or 0) * _UNIT_S[relative[2] or "s"]
        return datetime.fromtimestamp((time.time() if now_s is None else now_s) - back_s, UTC)
    if _EPOCH_MS.match(text):
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise TimeError(
            f"{text!r} is not a time like 2026-03-01, 2026-03-01T08:00, 2026-03-01T01:00Z or now-6h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CITY_TZ)
    return moment.astimezone(UTC)


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class TimeParam(click.ParamType):
    """A click option type over `parse_time`; `unit="ms"` gives epoch milliseconds instead of a datetime."""

    name = "TIME"

    def __init__(self, unit: str = "datetime") -> None:
        self.unit = unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime | int) and not isinstance(value, bool):
            moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
        else:
            try:
                moment = parse_time(str(value))
            except TimeError as error:
                self.fail(str(error), param, ctx)
        return epoch_ms(moment) if self.unit == "ms" else moment


def time_option(*names: str, help: str, unit: str = "datetime") -> Any:
    """A `--from`/`--to` style option whose help always states the rule for bare times."""
    return click.option(*names, type=TimeParam(unit), help=f"{help} TIME: {TIME_RULE}.")
