"""The Thai Air Quality Index (AQI) after the Pollution Control Department (PCD) method.

Source: Table 2 of the PCD AQI definition, as mirrored in kongkiatchanu/pm2_5
`application/views/main/definition.php` (a Thai copy of the air4thai tables). PM2.5 uses the
revision in force since 1 June 2023 (thailand.go.th/issue-focus-detail/001_04_073;
nationthailand.com/thailand/general/40027418): 0-15.0 / 15.1-25.0 / 25.1-37.5 / 37.6-75.0 / >= 75.1.
The older PM2.5 scheme (orange 51-90, red >= 91) is still widely copied; it is not used here.

========  =====  ===========  ========  =========  ==========  ==========  ========
AQI       band   PM2.5 ug/m3  PM10      O3 ppb     CO ppm      NO2 ppb     SO2 ppb
========  =====  ===========  ========  =========  ==========  ==========  ========
0-25      1      0-15.0       0-50      0-35       0-4.4       0-60        0-100
26-50     2      15.1-25.0    51-80     36-50      4.5-6.4     61-106      101-200
51-100    3      25.1-37.5    81-120    51-70      6.5-9.0     107-170     201-300
101-200   4      37.6-75.0    121-180   71-120     9.1-30.0    171-340     301-400
> 200     5      >= 75.1      >= 181    >= 121     >= 30.1     >= 341      >= 401
========  =====  ===========  ========  =========  ==========  ==========  ========

Averaging periods (`AVERAGING_HOURS`): PM2.5 and PM10 a rolling 24 h mean, O3 and CO a rolling
8 h mean, NO2 and SO2 a 1 h mean. The caller averages; this module only maps a mean to an index.

Decisions (the sources leave these open):

1. Precision. The table has gaps between bands (PM2.5 15.0 then 15.1). The averaged concentration
   is first rounded, half up, to the table's precision: one decimal for PM2.5 and CO, an integer for
   PM10, O3, NO2 and SO2. Rounding works on the float's shortest decimal form (``repr``), so 37.55
   rounds to 37.6 although the nearest binary double is 37.549999... Then the band is the one with
   ``lo <= x <= hi``; after rounding every value falls in exactly one band.
2. Sub-index. Linear interpolation within the band, ``I = (Ij - Ii) / (Xj - Xi) * (X - Xi) + Ii``,
   computed exactly (fractions) and rounded half up to an integer (12.5 -> 13).
3. Above the table. Band 5 (> 200) has no upper breakpoint. It is open-ended: it starts at its
   lower breakpoint with index 201 and continues with the slope of band 4 (101-200), with no cap.
   A larger concentration therefore never gives a smaller AQI.
4. Overall AQI is the highest sub-index over the pollutants given. The dominant pollutant is the
   one with that sub-index; ties go to the pollutant that comes first in `POLLUTANTS`
   (pm25, pm10, o3, co, no2, so2). The band follows from the overall AQI.
5. Bad input. A negative, NaN or infinite concentration, an unknown pollutant name or a negative
   AQI raise `ValueError`: the caller leaves out pollutants it has no mean for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction


@dataclass(frozen=True)
class Band:
    """One of the five PCD AQI levels.

    `aqi_max` is None for the open-ended band 5. `colour` is the hex form of the RGB the air4thai
    site uses (blue 0,191,243; green 0,166,81; yellow 253,192,78; orange 242,101,34; red 205,0,0).
    """

    number: int
    aqi_min: int
    aqi_max: int | None
    colour: str
    label_en: str
    label_th: str
    advice_en: str


BANDS: tuple[Band, ...] = (
    Band(1, 0, 25, "#00BFF3", "Very good", "ดีมาก", "Fine for outdoor activities and tourism."),
    Band(2, 26, 50, "#00A651", "Good", "ดี", "Outdoor activities and tourism as normal."),
    Band(
        3,
        51,
        100,
        "#FDC04E",
        "Moderate",
        "ปานกลาง",
        "The general public can carry on as normal. Sensitive groups with symptoms should cut time outdoors.",
    ),
    Band(
        4,
        101,
        200,
        "#F26522",
        "Starting to affect health",
        "เริ่มมีผลกระทบต่อสุขภาพ",
        "Everyone should reduce time outdoors or wear protection. See a doctor if symptoms appear.",
    ),
    Band(5, 201, None, "#CD0000", "Affects health", "มีผลกระทบต่อสุขภาพ", "Everyone should avoid outdoor activity."),
)


@dataclass(frozen=True)
class Pollutant:
    """A pollutant's unit, averaging period and concentration breakpoints.

    `breakpoints[k]` is the closed range (lo, hi) of band k + 1 for bands 1-4; band 5 is open-ended
    from `top`. `decimals` is the table's precision, to which a concentration is rounded before lookup.
    """

    name: str
    unit: str
    averaging_hours: int
    decimals: int
    breakpoints: tuple[tuple[float, float], ...]
    top: float


# Order matters: it breaks ties for the dominant pollutant.
POLLUTANTS: tuple[Pollutant, ...] = (
    Pollutant("pm25", "ug/m3", 24, 1, ((0, 15.0), (15.1, 25.0), (25.1, 37.5), (37.6, 75.0)), top=75.1),
    Pollutant("pm10", "ug/m3", 24, 0, ((0, 50), (51, 80), (81, 120), (121, 180)), top=181),
    Pollutant("o3", "ppb", 8, 0, ((0, 35), (36, 50), (51, 70), (71, 120)), top=121),
    Pollutant("co", "ppm", 8, 1, ((0, 4.4), (4.5, 6.4), (6.5, 9.0), (9.1, 30.0)), top=30.1),
    Pollutant("no2", "ppb", 1, 0, ((0, 60), (61, 106), (107, 170), (171, 340)), top=341),
    Pollutant("so2", "ppb", 1, 0, ((0, 100), (101, 200), (201, 300), (301, 400)), top=401),
)

_BY_NAME: dict[str, Pollutant] = {p.name: p for p in POLLUTANTS}
# The table's precisions as decimal steps (decimals -> 1, 0.1, ...).
_STEPS: dict[int, Decimal] = {p.decimals: Decimal(1).scaleb(-p.decimals) for p in POLLUTANTS}
_WIDE = Context(prec=400)  # every digit of any finite float's shortest form (at most ~330)
AVERAGING_HOURS: Mapping[str, int] = {p.name: p.averaging_hours for p in POLLUTANTS}
UNITS: Mapping[str, str] = {p.name: p.unit for p in POLLUTANTS}


@dataclass(frozen=True)
class AqiResult:
    """The overall AQI of a set of pollutant means, its band, and the sub-index of each pollutant."""

    aqi: int
    band: Band
    dominant: str
    sub_indices: dict[str, int]


def _half_up(value: Fraction, decimals: int = 0) -> Fraction:
    scale = 10**decimals
    return Fraction(math.floor(value * scale + Fraction(1, 2)), scale)


def _exact(value: float) -> Fraction:
    """The float's shortest decimal form, exactly (15.05 -> 1505/100, not the binary 15.0500000000000007...)."""
    return Fraction(repr(float(value)))


def _pollutant(name: str) -> Pollutant:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown pollutant {name!r}; expected one of {', '.join(_BY_NAME)}") from None


def _slope(band: Band, lo: float, hi: float) -> Fraction:
    assert band.aqi_max is not None, "band 5 has no slope of its own"
    return Fraction(band.aqi_max - band.aqi_min) / (_exact(hi) - _exact(lo))


def sub_index(pollutant: str, concentration: float) -> int:
    """The AQI of one pollutant's averaged concentration (in `UNITS[pollutant]`)."""
    spec = _pollutant(pollutant)
    if not math.isfinite(concentration) or concentration < 0:
        raise ValueError(f"{pollutant} concentration must be a finite number >= 0, got {concentration!r}")
    # Rounded half up at the table's precision, on the shortest decimal form (decimal is exact and
    # fast for this, and the same as `_half_up(_exact(c), decimals)` for c >= 0).
    rounded = Decimal(repr(float(concentration))).quantize(_STEPS[spec.decimals], ROUND_HALF_UP, _WIDE)
    return _rounded_sub_index(spec.name, rounded)


@functools.lru_cache(maxsize=16384)
def _rounded_sub_index(pollutant: str, rounded: Decimal) -> int:
    """`sub_index` of a concentration already rounded to the table's precision (means repeat once
    rounded, so the exact interpolation is done once per value)."""
    spec = _BY_NAME[pollutant]
    x = Fraction(rounded)
    for band, (lo, hi) in zip(BANDS[:4], spec.breakpoints, strict=True):
        if x <= _exact(hi):
            index = _slope(band, lo, hi) * (x - _exact(lo)) + band.aqi_min
            break
    else:  # band 5, open-ended: band 4's slope, starting at (top, 201)
        band4_lo, band4_hi = spec.breakpoints[-1]
        index = _slope(BANDS[3], band4_lo, band4_hi) * (x - _exact(spec.top)) + BANDS[4].aqi_min
    return int(_half_up(index))


def band_for(aqi: int) -> Band:
    """The band (1-5) an AQI value falls in."""
    if aqi < 0:
        raise ValueError(f"AQI must be >= 0, got {aqi!r}")
    for band in BANDS:
        if band.aqi_max is None or aqi <= band.aqi_max:
            return band
    raise AssertionError("unreachable: the last band is open-ended")


def thai_aqi(concentrations: Mapping[str, float]) -> AqiResult | None:
    """The overall AQI of the pollutants given (name -> averaged concentration); None if none given."""
    for name in concentrations:
        _pollutant(name)
    subs = {p.name: sub_index(p.name, concentrations[p.name]) for p in POLLUTANTS if p.name in concentrations}
    if not subs:
        return None
    dominant = max(subs, key=lambda name: subs[name])  # max keeps the first of equals, i.e. POLLUTANTS order
    aqi = subs[dominant]
    return AqiResult(aqi=aqi, band=band_for(aqi), dominant=dominant, sub_indices=subs)
