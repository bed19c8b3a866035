"""One time parser for every command: bare times are Bangkok time, everything else means what it says."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from deploy.cli import app as cli
from sensors.timeparse import TIME_RULE, TimeError, TimeParam, parse_time

BANGKOK_MIDNIGHT = datetime(2026, 2, 28, 17, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Bangkok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", BANGKOK_MIDNIGHT),
        ("2026-03-01T00:00", BANGKOK_MIDNIGHT),
        ("2026-03-01 07:00", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("2026-03-01T00:00Z", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("2026-03-01T00:00z", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("2026-03-01T09:00+09:00", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("1772323200000", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("now", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("now-6h", datetime(2026, 2, 28, 18, 0, tzinfo=UTC)),
        ("now-90m", datetime(2026, 2, 28, 22, 30, tzinfo=UTC)),
        ("now-1.5d", datetime(2026, 2, 27, 12, 0, tzinfo=UTC)),
    ],
)
def test_forms(text: str, expected: datetime) -> None:
    assert parse_time(text, now_s=datetime(2026, 3, 1, tzinfo=UTC).timestamp()) == expected


@pytest.mark.parametrize("text", ["yesterday", "noon", "now-6", "now+1h", "2026-13-01", ""])
def test_refuses_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(TimeError, match="is not a time like 2026-03-01"):
        parse_time(text)


def test_milliseconds_unit() -> None:
    assert TimeParam("ms").convert("2026-03-01T00:00Z", None, None) == 1_772_323_200_000
    with pytest.raises(click.BadParameter, match="is not a time like"):
        TimeParam("ms").convert("noon", None, None)


COMMANDS_WITH_TIMES = [
    ["pipeline", "run"],
    ["pipeline", "rollup"],
    ["simulate"],
    ["report"],
    ["audit"],
    ["contract", "check"],
]


@pytest.mark.parametrize("command", COMMANDS_WITH_TIMES, ids=" ".join)
def test_every_time_option_states_the_rule(command: list[str]) -> None:
    """The same day must mean the same hours in every command: the rule is in each `--help`."""
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()).count(TIME_RULE) >= 1, result.output


def test_every_time_option_uses_the_one_parser() -> None:
    """No command reads a --from/--to/--at style option with its own type."""

    def walk(command: click.Command, path: str) -> list[str]:
        found = [
            f"{path} {param.opts[0]}"
            for param in command.params
            if isinstance(param, click.Option)
            and {"--from", "--to", "--received-at"} & set(param.opts)
            and not isinstance(param.type, TimeParam)
        ]
        if isinstance(command, click.Group):
            context = click.Context(command)
            for name in command.list_commands(context):  # the top level is lazy: list_commands names them all
                sub = command.get_command(context, name)
                assert sub is not None, name
                found += walk(sub, f"{path} {name}")
        return found

    assert walk(cli, "smartcity") == []
