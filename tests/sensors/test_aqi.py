"""The Thai AQI (PCD method): breakpoint edges, interpolation, rounding, extrapolation, overall AQI.

Expected values are written out by hand from the PCD table (anchors.md 1.2), not read back
from `sensors.aqi`, so a typo in the module's table fails here.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensors.aqi import AVERAGING_HOURS, BANDS, UNITS, band_for, sub_index, thai_aqi

# Every band edge of every pollutant: (pollutant, concentration, AQI).
EDGES = [
    *[("pm25", x, i) for x, i in [(0, 0), (15.0, 25), (15.1, 26), (25.0, 50), (25.1, 51)]],
    *[("pm25", x, i) for x, i in [(37.5, 100), (37.6, 101), (75.0, 200), (75.1, 201)]],
    *[("pm10", x, i) for x, i in [(0, 0), (50, 25), (51, 26), (80, 50), (81, 51)]],
    *[("pm10", x, i) for x, i in [(120, 100), (121, 101), (180, 200), (181, 201)]],
    *[("o3", x, i) for x, i in [(0, 0), (35, 25), (36, 26), (50, 50), (51, 51)]],
    *[("o3", x, i) for x, i in [(70, 100), (71, 101), (120, 200), (121, 201)]],
    *[("co", x, i) for x, i in [(0, 0), (4.4, 25), (4.5, 26), (6.4, 50), (6.5, 51)]],
    *[("co", x, i) for x, i in [(9.0, 100), (9.1, 101), (30.0, 200), (30.1, 201)]],
    *[("no2", x, i) for x, i in [(0, 0), (60, 25), (61, 26), (106, 50), (107, 51)]],
    *[("no2", x, i) for x, i in [(170, 100), (171, 101), (340, 200), (341, 201)]],
    *[("so2", x, i) for x, i in [(0, 0), (100, 25), (101, 26), (200, 50), (201, 51)]],
    *[("so2", x, i) for x, i in [(300, 100), (301, 101), (400, 200), (401, 201)]],
]

# Upper edge of bands 1-4 and the table's precision (decimals), per pollutant.
TOPS = {
    "pm25": ((15.0, 25.0, 37.5, 75.0), 1),
    "pm10": ((50, 80, 120, 180), 0),
    "o3": ((35, 50, 70, 120), 0),
    "co": ((4.4, 6.4, 9.0, 30.0), 1),
    "no2": ((60, 106, 170, 340), 0),
    "so2": ((100, 200, 300, 400), 0),
}


@pytest.mark.parametrize(("pollutant", "concentration", "expected"), EDGES)
def test_every_breakpoint_edge(pollutant: str, concentration: float, expected: int) -> None:
    assert sub_index(pollutant, concentration) == expected


def half_up(value: float) -> int:
    return math.floor(value + 0.5)


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        # (50 - 26) / (25.0 - 15.1) * (20.0 - 15.1) + 26 = 24 / 9.9 * 4.9 + 26 = 37.88 -> 38
        ("pm25", 20.0, half_up(24 / 9.9 * 4.9 + 26)),
        # (200 - 101) / (75.0 - 37.6) * (50.0 - 37.6) + 101 = 99 / 37.4 * 12.4 + 101 = 133.82 -> 134
        ("pm25", 50.0, 134),
        # 25 / 15.0 * 7.5 = 12.5 -> 13: the index rounds half up, not half to even
        ("pm25", 7.5, 13),
        # 25 / 50 * 25 = 12.5 -> 13
        ("pm10", 25, 13),
        # (100 - 51) / (120 - 81) * (100 - 81) + 51 = 49 / 39 * 19 + 51 = 74.87 -> 75
        ("pm10", 100, 75),
        # (100 - 51) / (70 - 51) * (60 - 51) + 51 = 49 / 19 * 9 + 51 = 74.21 -> 74
        ("o3", 60, 74),
        # 25 / 4.4 * 2.0 = 11.36 -> 11
        ("co", 2.0, 11),
        # 99 / (30.0 - 9.1) * (20.0 - 9.1) + 101 = 99 / 20.9 * 10.9 + 101 = 152.63 -> 153
        ("co", 20.0, 153),
        # 99 / (340 - 171) * (250 - 171) + 101 = 99 / 169 * 79 + 101 = 147.28 -> 147
        ("no2", 250, 147),
        # 25 / 100 * 50 = 12.5 -> 13
        ("so2", 50, 13),
        # 99 / (400 - 301) * (350 - 301) + 101 = 49 + 101 = 150
        ("so2", 350, 150),
    ],
)
def test_interpolation_inside_bands(pollutant: str, concentration: float, expected: int) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        ("pm25", 15.04, 25),  # -> 15.0, band 1
        ("pm25", 15.05, 26),  # -> 15.1, band 2
        ("pm25", 37.549, 100),  # -> 37.5
        # 37.55 is stored as 37.54999...; the decimal form a person wrote rounds half up to 37.6
        ("pm25", 37.55, 101),
        ("pm25", 75.05, 201),  # also 75.04999... in binary
        ("co", 4.44, 25),
        ("co", 4.45, 26),
        ("pm10", 50.4, 25),
        ("pm10", 50.5, 26),  # integer table: 50.5 -> 51
        ("o3", 35.49, 25),
        ("o3", 35.5, 26),
        ("no2", 106.5, 51),
        ("so2", 400.4, 200),
    ],
)
def test_concentration_is_rounded_half_up_to_table_precision(
    pollutant: str, concentration: float, expected: int
) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        # band 5 continues band 4's slope from (75.1, 201): 201 + 99 / 37.4 * (100.0 - 75.1) = 266.91 -> 267
        ("pm25", 100.0, 267),
        ("pm25", 500.0, half_up(201 + 99 / 37.4 * (500.0 - 75.1))),
        # 201 + 99 / 59 * (300 - 181) = 400.68 -> 401
        ("pm10", 300, 401),
        # 201 + 99 / 49 * (200 - 121) = 360.61 -> 361
        ("o3", 200, 361),
        # 201 + 99 / 20.9 * (50.0 - 30.1) = 295.26 -> 295
        ("co", 50.0, 295),
        # 201 + 99 / 169 * (1000 - 341) = 587.04 -> 587
        ("no2", 1000, 587),
        # 201 + 99 / 99 * (1000 - 401) = 800
        ("so2", 1000, 800),
    ],
)
def test_above_the_table_extrapolates_with_band_4_slope(pollutant: str, concentration: float, expected: int) -> None:
    assert sub_index(pollutant, concentration) == expected


def test_above_the_table_is_not_capped() -> None:
    assert sub_index("pm25", 1000.0) > sub_index("pm25", 500.0) > sub_index("pm25", 75.1) == 201


def test_averaging_hours_and_units() -> None:
    assert dict(AVERAGING_HOURS) == {"pm25": 24, "pm10": 24, "o3": 8, "co": 8, "no2": 1, "so2": 1}
    assert dict(UNITS) == {"pm25": "ug/m3", "pm10": "ug/m3", "o3": "ppb", "co": "ppm", "no2": "ppb", "so2": "ppb"}


def test_bands_data() -> None:
    assert [(b.number, b.aqi_min, b.aqi_max) for b in BANDS] == [
        (1, 0, 25),
        (2, 26, 50),
        (3, 51, 100),
        (4, 101, 200),
        (5, 201, None),
    ]
    rgb = [(0, 191, 243), (0, 166, 81), (253, 192, 78), (242, 101, 34), (205, 0, 0)]
    assert [b.colour for b in BANDS] == ["#{:02X}{:02X}{:02X}".format(*c) for c in rgb]
    assert [b.colour for b in BANDS] == ["#00BFF3", "#00A651", "#FDC04E", "#F26522", "#CD0000"]
    assert [b.label_th for b in BANDS] == ["ดีมาก", "ดี", "ปานกลาง", "เริ่มมีผลกระทบต่อสุขภาพ", "มีผลกระทบต่อสุขภาพ"]
    labels_en = ["Very good", "Good", "Moderate", "Starting to affect health", "Affects health"]
    assert [b.label_en for b in BANDS] == labels_en
    assert all(b.advice_en for b in BANDS)


@pytest.mark.parametrize(
    ("aqi", "number"),
    [(0, 1), (25, 1), (26, 2), (50, 2), (51, 3), (100, 3), (101, 4), (200, 4), (201, 5), (10_000, 5)],
)
def test_band_for(aqi: int, number: int) -> None:
    assert band_for(aqi).number == number


def test_overall_is_the_max_sub_index_and_names_the_dominant_pollutant() -> None:
    result = thai_aqi({"o3": 60, "pm10": 100, "pm25": 50.0})
    assert result is not None
    assert result.sub_indices == {"pm25": 134, "pm10": 75, "o3": 74}
    assert result.aqi == 134
    assert result.dominant == "pm25"
    assert result.band.number == 4
    assert result.band.colour == "#F26522"


def test_a_gas_can_dominate() -> None:
    result = thai_aqi({"pm25": 10.0, "co": 20.0})
    assert result is not None
    assert (result.aqi, result.dominant, result.band.number) == (153, "co", 4)


def test_ties_go_to_the_first_pollutant_in_the_fixed_order() -> None:
    # pm25 15.0 -> 25 and pm10 50 -> 25; the order pm25, pm10, o3, co, no2, so2 decides, not the mapping's order
    result = thai_aqi({"pm10": 50, "pm25": 15.0})
    assert result is not None
    assert (result.aqi, result.dominant) == (25, "pm25")
    result = thai_aqi({"so2": 100, "no2": 60})
    assert result is not None
    assert (result.aqi, result.dominant) == (25, "no2")


def test_no_pollutant_gives_none() -> None:
    assert thai_aqi({}) is None


@pytest.mark.parametrize("bad", [-0.1, -1, math.nan, math.inf, -math.inf])
def test_negative_or_non_finite_concentration_raises(bad: float) -> None:
    with pytest.raises(ValueError, match="pm25"):
        sub_index("pm25", bad)
    with pytest.raises(ValueError, match="co"):
        thai_aqi({"pm25": 10.0, "co": bad})


def test_unknown_pollutant_raises() -> None:
    with pytest.raises(ValueError, match="'pm1'"):
        sub_index("pm1", 10.0)
    with pytest.raises(ValueError, match="'PM25'"):
        thai_aqi({"PM25": 10.0})


def test_negative_aqi_has_no_band() -> None:
    with pytest.raises(ValueError, match="-1"):
        band_for(-1)


concentrations = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(pollutant=st.sampled_from(sorted(TOPS)), a=concentrations, b=concentrations)
def test_sub_index_is_monotonic(pollutant: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert sub_index(pollutant, low) <= sub_index(pollutant, high)


@given(pollutant=st.sampled_from(sorted(TOPS)), x=concentrations)
def test_band_of_sub_index_matches_table_row(pollutant: str, x: float) -> None:
    tops, decimals = TOPS[pollutant]
    rounded = Decimal(repr(x)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    row = next((k + 1 for k, top in enumerate(tops) if rounded <= Decimal(repr(top))), 5)
    assert band_for(sub_index(pollutant, x)).number == row
