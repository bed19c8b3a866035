"""Deterministic sensor signals: every value is a pure function of (seed, sensor, metric, ts).

Nothing here keeps state between readings, so a replay of any time range, in
any order or chunking, yields the same values, and a live run and a replay of
the same hours agree. Randomness comes from hashing (splitmix64) the seed, the
sensor and the time into smooth "value noise" (interpolated random lattices) or
per-reading white noise; cumulative quantities use closed-form integrals.

The shape of the data, all in Thai local time (UTC+7):

- shared city "weather" that sensors of one city agree on: rain storms
  (Phuket's south-west monsoon May-Oct, Chiang Mai's rainy season peaking
  Aug-Sep), haze episodes (Chiang Mai's burning season Feb-Apr, PM2.5 often
  above 75 ug/m3, with PM10 and CO following), temperature and humidity;
- traffic demand with weekday rush hours, which noise and NO2 follow;
- flood gauges that rise after rain with a delay, sometimes above the site's
  warning and danger levels of the registry;
- parking occupancy by hour, waste bins that fill and are emptied, energy
  meters with a daily load curve and a kWh counter that never decreases.

Models are looked up by (kind, metric) in `MODELS`; any other metric (a new
kind in an extra registry file) gets `generic`, a bounded random walk inside
the metric's range, scaled to the site's thresholds when it has some. The
caller clips every value into the metric's registry range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sensors.noise import F64, I64, U64, bump, fbm, tag_key, uniform
from sensors.registry import Kind, Metric

LOCAL_UTC_OFFSET_S = 7 * 3600  # Indochina Time, no daylight saving
DAY_S = 86_400.0
YEAR_DAYS = 365.2425
DAYS_1970_TO_2000 = 10_957  # day of year is counted from 2000-01-01 in mean-year steps
HOUR_S = 3600.0


# -- climate of each city ------------------------------------------------------------------------


@dataclass(frozen=True)
class Climate:
    """What a city's weather and air look like over the year (local hours, days of year from Jan 1)."""

    temp_mean_c: float  # outside the hot and the cool season
    temp_hot_c: float  # warmer at the height of the hot season
    hottest_doy: float
    temp_cool_c: float  # cooler at the height of the cool season
    coolest_doy: float
    temp_diurnal_amp_c: float
    dew_point_dry_c: float
    dew_point_wet_c: float
    wet_peak_doy: float  # centre of the rainy season
    wet_width_days: float
    rain_share_wet: float  # share of 3-hour storm slots with rain at the height of the rainy season
    rain_share_dry: float
    rain_intensity_mm_h: float  # mean intensity of a storm
    pm25_background: float  # ug/m3 outside haze episodes
    haze_peak_doy: float
    haze_width_days: float
    haze_pm25: float  # extra ug/m3 at the height of the haze season
    wind_mean_ms: float
    wind_dry_deg: float  # prevailing direction outside the rainy season
    wind_wet_deg: float


CLIMATES: dict[str, Climate] = {
    # Andaman coast: warm all year, south-west monsoon May-Oct (wettest Sep), NE winds Nov-Apr,
    # clean sea air except the odd Sumatran smoke episode in Sep-Oct.
    "phuket": Climate(
        temp_mean_c=28.0,
        temp_hot_c=1.2,
        hottest_doy=105,
        temp_cool_c=1.0,
        coolest_doy=5,
        temp_diurnal_amp_c=3.5,
        dew_point_dry_c=22.5,
        dew_point_wet_c=24.5,
        wet_peak_doy=240,
        wet_width_days=60,
        rain_share_wet=0.24,
        rain_share_dry=0.01,
        rain_intensity_mm_h=6.0,
        pm25_background=13.0,
        haze_peak_doy=265,
        haze_width_days=15,
        haze_pm25=15.0,
        wind_mean_ms=4.0,
        wind_dry_deg=60,
        wind_wet_deg=240,
    ),
    # Northern valley: cool dry Dec-Jan, hot April, rainy May-Oct (wettest Aug-Sep), and the
    # Feb-Apr burning season when smoke is trapped in the valley.
    "chiang-mai": Climate(
        temp_mean_c=26.5,
        temp_hot_c=3.5,
        hottest_doy=105,
        temp_cool_c=5.0,
        coolest_doy=5,
        temp_diurnal_amp_c=5.5,
        dew_point_dry_c=14.0,
        dew_point_wet_c=23.0,
        wet_peak_doy=240,
        wet_width_days=65,
        rain_share_wet=0.17,
        rain_share_dry=0.01,
        rain_intensity_mm_h=5.5,
        pm25_background=18.0,
        haze_peak_doy=74,
        haze_width_days=24,
        haze_pm25=105.0,
        wind_mean_ms=1.8,
        wind_dry_deg=20,
        wind_wet_deg=225,
    ),
}
# A city the table does not know: mild tropical.
DEFAULT_CLIMATE = Climate(
    temp_mean_c=27.5,
    temp_hot_c=1.5,
    hottest_doy=110,
    temp_cool_c=2.0,
    coolest_doy=5,
    temp_diurnal_amp_c=4.0,
    dew_point_dry_c=20.0,
    dew_point_wet_c=24.0,
    wet_peak_doy=230,
    wet_width_days=65,
    rain_share_wet=0.18,
    rain_share_dry=0.03,
    rain_intensity_mm_h=5.0,
    pm25_background=15.0,
    haze_peak_doy=80,
    haze_width_days=25,
    haze_pm25=20.0,
    wind_mean_ms=3.0,
    wind_dry_deg=45,
    wind_wet_deg=225,
)


# -- a batch of readings to compute ------------------------------------------------------------------


class Batch:
    """Readings of one kind: element i is sensor `sensor_keys[i]` at `ts_ms[i]`.

    Helpers give each model time of day, season, city climate and noise that is
    per reading (`white`), per sensor (`const`), per sensor over time (`noise`)
    or shared by the sensors of a city (`city_noise`).
    """

    def __init__(
        self,
        kind: Kind,
        ts_ms: I64,
        period_s: F64,
        sensor_keys: U64,
        city_keys: U64,
        climate_index: I64,
        climates: Sequence[Climate],
        thresholds: dict[str, tuple[F64, F64]],
    ) -> None:
        self.kind = kind
        self.ts_ms = ts_ms
        self.period_s = period_s  # time since the sensor's previous reading
        self.sensor_keys = sensor_keys
        self.city_keys = city_keys
        self.thresholds = thresholds  # metric -> (warning, danger) of each reading's site
        self.t = ts_ms.astype(np.float64) / 1000.0
        local = self.t + LOCAL_UTC_OFFSET_S
        self.hour = (local % DAY_S) / HOUR_S
        self.weekend = ((np.floor(local / DAY_S) + 3) % 7) >= 5  # 1970-01-01 was a Thursday
        self.doy = (self.t / DAY_S - DAYS_1970_TO_2000) % YEAR_DAYS
        self.climate_index = climate_index  # into `climates`, one per reading
        self.climates = climates
        self._memo: dict[str, F64] = {}

    def memo(self, name: str, compute: Callable[[], F64]) -> F64:
        """A field several metrics use (rain, traffic), computed once per batch."""
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]

    def climate(self, name: str) -> F64:
        """One climate parameter for each reading (from its city)."""
        return self.memo(
            f"climate.{name}", lambda: np.array([getattr(c, name) for c in self.climates])[self.climate_index]
        )

    def repeat(self, times: int) -> Batch:
        """The batch with every reading repeated `times` times (for fields sampled at past times)."""
        idx = np.repeat(np.arange(len(self.t)), times)
        return Batch(
            self.kind,
            self.ts_ms[idx],
            self.period_s[idx],
            self.sensor_keys[idx],
            self.city_keys[idx],
            self.climate_index[idx],
            self.climates,
            {},
        )

    def const(self, tag: str) -> F64:
        """A per-sensor constant in [0, 1) (size of the car park, free-flow speed, ...)."""
        return uniform(self.sensor_keys ^ tag_key(tag), np.zeros(len(self.t), dtype=np.int64))

    def white(self, tag: str) -> F64:
        """Per-reading noise in [-1, 1]."""
        return uniform(self.sensor_keys ^ tag_key(tag), self.ts_ms) * 2.0 - 1.0

    def gauss(self, tag: str) -> F64:
        """Per-reading noise, roughly standard normal (Irwin-Hall of 4 uniforms)."""
        key = self.sensor_keys ^ tag_key(tag)
        total = np.zeros_like(self.t)
        for i in range(4):
            total += uniform(key ^ tag_key(str(i)), self.ts_ms)
        return (total - 2.0) * math.sqrt(3.0)

    def noise(self, tag: str, period_s: float, octaves: int = 3) -> F64:
        return fbm(self.sensor_keys ^ tag_key(tag), self.t, period_s, octaves)

    def city_noise(self, tag: str, period_s: float, octaves: int = 3, t: F64 | None = None) -> F64:
        return fbm(self.city_keys ^ tag_key(tag), self.t if t is None else t, period_s, octaves)


# -- shared city fields ---------------------------------------------------------------------------

STORM_SLOT_S = 3 * HOUR_S


def wet_season(b: Batch, doy: F64 | None = None) -> F64:
    """0 in the dry season, 1 at the height of the rainy season."""
    if doy is None:
        return b.memo("wet", lambda: wet_season(b, b.doy))
    return bump(doy, b.climate("wet_peak_doy"), b.climate("wet_width_days"), YEAR_DAYS)


def haze_season(b: Batch) -> F64:
    return bump(b.doy, b.climate("haze_peak_doy"), b.climate("haze_width_days"), YEAR_DAYS)


def rain_rate(b: Batch, t: F64 | None = None) -> F64:
    """City-wide rain intensity (mm/h) at `t` (default: each reading's time): storms of a few
    hours, more likely in the rainy season and in the afternoon. Two lattices of 3-hour storm
    slots, offset by half a slot, so rain rises and falls smoothly and can outlast one slot."""
    if t is None:
        return b.memo("rain", lambda: rain_rate(b, b.t))
    doy = (t / DAY_S - DAYS_1970_TO_2000) % YEAR_DAYS
    share = b.climate("rain_share_dry") + (b.climate("rain_share_wet") - b.climate("rain_share_dry")) * wet_season(
        b, doy
    )
    total = np.zeros_like(t)
    for lattice, offset in (("storm-a", 0.0), ("storm-b", STORM_SLOT_S / 2)):
        x = (t + offset) / STORM_SLOT_S
        slot = np.floor(x)
        key = b.city_keys ^ tag_key(lattice)
        index = slot.astype(np.int64)
        centre_hour = (((slot + 0.5) * STORM_SLOT_S - offset + LOCAL_UTC_OFFSET_S) % DAY_S) / HOUR_S
        afternoon = 0.5 + 1.0 * bump(centre_hour, 16.0, 3.0, 24.0)
        raining = uniform(key, index) < share / 2 * afternoon
        intensity = -np.log1p(-uniform(key ^ tag_key("intensity"), index)) * b.climate("rain_intensity_mm_h")
        envelope = np.sin(np.pi * (x - slot)) ** 2
        total += np.where(raining, np.minimum(intensity, 120.0) * envelope, 0.0)
    return total


def traffic_demand(b: Batch) -> F64:
    """Road demand 0..1: weekday rush hours at 07:45 and 17:45, flatter weekends, quiet nights."""
    return b.memo("traffic", lambda: _traffic_demand(b))


def _traffic_demand(b: Batch) -> F64:
    h = b.hour
    day = np.clip((h - 5.5) / 1.5, 0, 1) * np.clip((23.0 - h) / 2.0, 0, 1)
    weekday = 0.07 + 0.42 * day + 0.5 * bump(h, 7.75, 1.0, 24) + 0.45 * bump(h, 17.75, 1.4, 24)
    weekend = 0.07 + 0.5 * day + 0.15 * bump(h, 11.5, 2.5, 24) + 0.2 * bump(h, 19.0, 2.0, 24)
    demand = np.where(b.weekend, weekend, weekday) * (1.0 + 0.08 * b.city_noise("traffic", 2 * HOUR_S))
    return np.clip(demand, 0.02, 1.0)


def air_temperature(b: Batch) -> F64:
    annual = b.climate("temp_hot_c") * bump(b.doy, b.climate("hottest_doy"), 45.0, YEAR_DAYS) - b.climate(
        "temp_cool_c"
    ) * bump(b.doy, b.climate("coolest_doy"), 45.0, YEAR_DAYS)
    # Cooler and less diurnal swing under monsoon clouds.
    diurnal_amp = b.climate("temp_diurnal_amp_c") * (1.0 - 0.35 * wet_season(b))
    diurnal = diurnal_amp * (np.cos(2 * np.pi * (b.hour - 14.5) / 24) + 0.25 * np.cos(4 * np.pi * (b.hour - 14.5) / 24))
    rain_cooling = 3.0 * np.minimum(rain_rate(b) / 8.0, 1.0)
    synoptic = 1.2 * b.city_noise("temperature", 3 * DAY_S)
    return b.climate("temp_mean_c") + annual + diurnal - rain_cooling + synoptic


# -- models per (kind, metric) -------------------------------------------------------------------

Values = dict[str, F64]
Model = Callable[[Batch, Values], F64]


def need(b: Batch, v: Values, metric: str) -> F64:
    """Another metric's value for the same readings (computed if the kind's order has not yet)."""
    if metric not in v:
        v[metric] = MODELS[(b.kind.id, metric)](b, v)
    return v[metric]


def pm25(b: Batch, v: Values) -> F64:
    episode = 0.45 + 1.1 * (0.5 + 0.5 * b.city_noise("haze", 4 * DAY_S))  # multi-day smoke episodes
    haze = b.climate("haze_pm25") * haze_season(b) * episode
    # Night-time inversion holds particles near the ground; afternoon mixing dilutes them.
    diurnal = 1.0 + 0.28 * np.cos(2 * np.pi * (b.hour - 6) / 24) + 0.08 * np.cos(4 * np.pi * (b.hour - 8) / 24)
    washout = 1.0 - 0.45 * wet_season(b) - 0.3 * np.minimum(rain_rate(b) / 5.0, 1.0)
    local = 0.85 + 0.3 * b.const("site-pm")
    base = (b.climate("pm25_background") + haze) * diurnal * washout * local
    return base + 6.0 * traffic_demand(b) + 0.06 * base * b.gauss("pm25")


def pm10(b: Batch, v: Values) -> F64:
    ratio = 1.4 + 0.35 * b.const("pm-ratio")
    return need(b, v, "pm25") * ratio + 8.0 * traffic_demand(b) * b.const("dust") + 1.5 * b.gauss("pm10")


def co(b: Batch, v: Values) -> F64:
    return 0.25 + 0.011 * need(b, v, "pm25") + 0.7 * traffic_demand(b) ** 2 + 0.04 * b.gauss("co")


def o3(b: Batch, v: Values) -> F64:
    sunlight = bump(b.hour, 14.0, 2.8, 24)
    photochemistry = (18.0 + 35.0 * haze_season(b)) * (1.0 - 0.5 * wet_season(b))
    titration = 8.0 * traffic_demand(b)  # NO from traffic eats ozone near roads
    return 12.0 + photochemistry * sunlight - titration + 3.0 * b.noise("o3", 6 * HOUR_S) + 1.5 * b.gauss("o3")


def no2(b: Batch, v: Values) -> F64:
    inversion = 1.0 + 0.3 * bump(b.hour, 5.0, 3.0, 24)
    roadside = 0.6 + 0.8 * b.const("roadside")
    return (4.0 + 32.0 * traffic_demand(b) * roadside) * inversion + 1.5 * b.gauss("no2")


def so2(b: Batch, v: Values) -> F64:
    return 1.5 + 1.2 * (1 + b.noise("so2", 12 * HOUR_S)) + 0.3 * b.gauss("so2")


def temperature(b: Batch, v: Values) -> F64:
    return air_temperature(b) + 0.6 * (b.const("siting") - 0.5) + 0.15 * b.gauss("temperature")


def humidity(b: Batch, v: Values) -> F64:
    """Relative humidity from temperature and the season's dew point (Magnus formula); saturated in rain."""
    t = need(b, v, "temperature")
    dry, wet = b.climate("dew_point_dry_c"), b.climate("dew_point_wet_c")
    dew = dry + (wet - dry) * wet_season(b) + 1.5 * b.city_noise("dew", 2 * DAY_S)
    dew = np.minimum(dew + 3.0 * np.minimum(rain_rate(b) / 3.0, 1.0), t)
    rh = 100.0 * np.exp(17.625 * dew / (243.04 + dew) - 17.625 * t / (243.04 + t))
    return rh + 1.0 * b.gauss("humidity")


def rainfall(b: Batch, v: Values) -> F64:
    """Rain since the previous reading (mm): the city's storm, stronger or weaker at this site."""
    local = 0.55 + 0.9 * (0.5 + 0.5 * b.noise("rain-cell", 2 * HOUR_S))
    return rain_rate(b) * local * b.period_s / HOUR_S


def wind_speed(b: Batch, v: Values) -> F64:
    mixing = 0.6 + 0.7 * bump(b.hour, 14.0, 4.0, 24)
    gusts = 4.0 * np.minimum(rain_rate(b) / 10.0, 1.0)
    exposure = 0.6 + 0.8 * b.const("exposure")
    speed = b.climate("wind_mean_ms") * mixing * exposure * (1.0 + 0.5 * b.noise("wind", 3 * HOUR_S)) + gusts
    return np.maximum(speed + 0.3 * b.gauss("wind"), 0.0)


def wind_direction(b: Batch, v: Values) -> F64:
    wet = wet_season(b)
    dry_deg, wet_deg = b.climate("wind_dry_deg"), b.climate("wind_wet_deg")
    turn = (wet_deg - dry_deg + 180.0) % 360.0 - 180.0  # shortest way round between the monsoons
    prevailing = dry_deg + turn * wet
    return (prevailing + 50.0 * b.noise("wind-dir", 6 * HOUR_S) + 10.0 * b.white("wind-dir")) % 360.0


def pressure(b: Batch, v: Values) -> F64:
    tide = 1.3 * np.cos(4 * np.pi * (b.hour - 10.0) / 24)  # the tropical semi-diurnal pressure tide
    season = 3.0 * np.cos(2 * np.pi * (b.doy - 10) / YEAR_DAYS)
    storm = -2.5 * np.minimum(rain_rate(b) / 10.0, 1.0)
    return 1009.5 + tide + season + storm + 2.5 * b.city_noise("pressure", 4 * DAY_S) + 0.1 * b.gauss("pressure")


FLOOD_KERNEL_HOURS = 36


def flood_level(b: Batch, v: Values) -> F64:
    """Gauge level: a dry-season base, a rainy-season baseflow and the catchment's delayed
    response to the city's rain of the last day and a half, scaled to the site's warning and
    danger levels so that the biggest storms cross them."""
    if "level" in b.thresholds:
        warning, danger = b.thresholds["level"]
    else:  # a gauge at a site without levels (possible with an edited kind): a tenth of the range
        metric = b.kind.metric("level") or b.kind.metrics[0]
        warning = np.full_like(b.t, metric.min + 0.3 * (metric.max - metric.min))
        danger = warning + 0.1 * (metric.max - metric.min)
    lag_h = 2.0 + 4.0 * b.const("catchment")  # small canals peak within hours, rivers later
    hours = np.arange(FLOOD_KERNEL_HOURS, dtype=np.float64)
    weights = (hours[None, :] + 0.5) * np.exp(-(hours[None, :] + 0.5) / lag_h[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    past = b.t[:, None] - hours[None, :] * HOUR_S
    rain = rain_rate(b.repeat(FLOOD_KERNEL_HOURS), past.ravel()).reshape(past.shape)
    response = (weights * rain).sum(axis=1)  # mm/h, smoothed and delayed
    base = 0.35 * warning + 0.2 * warning * wet_season(b)
    rise = (danger - 0.55 * warning) / 6.5  # m per mm/h of sustained catchment rain
    return base + rise * response**1.15 + 0.02 * b.noise("level", 6 * HOUR_S) + 0.004 * b.gauss("level")


def vehicle_count(b: Batch, v: Values) -> F64:
    lanes = 15.0 + 70.0 * b.const("lanes")  # vehicles per minute at full demand
    rain = 1.0 - 0.15 * np.minimum(rain_rate(b) / 5.0, 1.0)
    per_minute = lanes * traffic_demand(b) * rain * (1.0 + 0.12 * b.gauss("vehicles"))
    return np.maximum(per_minute, 0.0) * b.period_s / 60.0


def occupancy(b: Batch, v: Values) -> F64:
    return 3.0 + 55.0 * traffic_demand(b) ** 2 * (0.7 + 0.6 * b.const("bottleneck")) + 1.5 * b.gauss("occupancy")


def mean_speed(b: Batch, v: Values) -> F64:
    free_flow = 35.0 + 55.0 * b.const("free-flow")
    congestion = np.clip(need(b, v, "occupancy") / 70.0, 0.0, 1.0) ** 1.3
    rain = 1.0 - 0.12 * np.minimum(rain_rate(b) / 5.0, 1.0)
    return np.maximum(free_flow * (1.0 - 0.8 * congestion) * rain + 2.5 * b.gauss("speed"), 2.0)


def laeq(b: Batch, v: Values) -> F64:
    """Road noise: about 10 dB more for every ten-fold traffic, plus rain on the microphone."""
    siting = 8.0 * (b.const("road-distance") - 0.5)
    rain = 3.0 * np.minimum(rain_rate(b) / 5.0, 1.0)
    return 46.0 + siting + 22.0 * np.log10(1.0 + 9.0 * traffic_demand(b)) + rain + 1.8 * b.gauss("laeq")


def parking_capacity(b: Batch, v: Values) -> F64:
    return np.round(40.0 + 760.0 * b.const("car-park") ** 2)


def parking_occupied(b: Batch, v: Values) -> F64:
    capacity = need(b, v, "capacity")
    h = b.hour
    opening = np.clip((h - 7.5) / 2.0, 0, 1) * np.clip((22.5 - h) / 1.5, 0, 1)
    busy = 0.05 + 0.55 * opening + 0.2 * bump(h, 12.5, 1.5, 24) + 0.25 * bump(h, 19.0, 2.0, 24)
    busy = busy * np.where(b.weekend, 1.1, 1.0) + 0.06 * b.noise("parking", 3 * HOUR_S)
    return np.clip(np.round(capacity * np.clip(busy, 0.0, 1.0)), 0.0, capacity)


def fill_level(b: Batch, v: Values) -> F64:
    """Bins fill faster by day, are emptied at 06:00 local every `collect_days`, and some
    overflow (stay at 100 %) before the truck comes."""
    collect_days = np.where(b.const("collection") < 0.5, 2.0, np.where(b.const("collection") < 0.85, 3.0, 7.0))
    days_to_full = collect_days * (0.6 + 0.7 * b.const("bin-use"))
    local_days = (b.t + LOCAL_UTC_OFFSET_S - 6 * HOUR_S) / DAY_S  # a collection day starts at 06:00
    phase = np.floor(b.const("collection-day") * 7)
    since = (local_days - phase) % collect_days  # days since the last collection

    # Filling rate 1 + 0.6 cos(...) peaks mid-afternoon; its integral keeps the ramp monotonic.
    def filled(days: F64) -> F64:
        return days + 0.6 / (2 * np.pi) * np.sin(2 * np.pi * (days - 8.5 / 24))

    fill = 100.0 * (filled(since) - filled(np.zeros_like(since))) / days_to_full
    return np.minimum(fill, 100.0) + 0.8 * b.white("fill")


ENERGY_ORIGIN_S = 1_420_070_400.0  # 2015-01-01: meters were installed with a small reading then
_DAY_W = 2 * np.pi / DAY_S
_YEAR_W = 2 * np.pi / (YEAR_DAYS * DAY_S)
# Load shape 1 + sum(weight * cos(omega * (t - peak))), always > 0: air conditioning peaking at
# 14:00 local, lighting at 20:00 and the hot season in mid-April (day 105 of the year).
_LOAD = (
    (0.35, _DAY_W, 14.0 * HOUR_S - LOCAL_UTC_OFFSET_S),
    (0.12, 2 * _DAY_W, 20.0 * HOUR_S - LOCAL_UTC_OFFSET_S),
    (0.12, _YEAR_W, (DAYS_1970_TO_2000 + 105) * DAY_S),
)


def _base_load_kw(b: Batch) -> F64:
    return 20.0 * 10.0 ** (2.0 * b.const("load"))  # 20 kW shop to 2 MW feeder


def power(b: Batch, v: Values) -> F64:
    shape = 1.0 + sum(weight * np.cos(omega * (b.t - peak)) for weight, omega, peak in _LOAD)
    return _base_load_kw(b) * shape * (1.0 + 0.04 * b.gauss("power"))


def energy(b: Batch, v: Values) -> F64:
    """Cumulative kWh: the closed-form integral of the smooth load since installation, so it
    never decreases whatever readings are computed, and matches `power` on average."""
    t = np.maximum(b.t, ENERGY_ORIGIN_S)
    integral = t - ENERGY_ORIGIN_S
    for weight, omega, peak in _LOAD:
        integral = integral + weight / omega * (np.sin(omega * (t - peak)) - np.sin(omega * (ENERGY_ORIGIN_S - peak)))
    installed = 5_000.0 * b.const("meter-start")
    return installed + _base_load_kw(b) * integral / HOUR_S


def generic(metric: Metric) -> Model:
    """A bounded random walk for metrics without a model: around the site's thresholds when it
    has some (crossing the warning level now and then), else in the lower part of the range."""

    def model(b: Batch, v: Values) -> F64:
        walk = b.noise(f"walk-{metric.name}", 8 * HOUR_S, octaves=4)
        diurnal = 0.2 * np.cos(2 * np.pi * (b.hour - 14.0) / 24)
        if metric.name in b.thresholds:
            warning, danger = b.thresholds[metric.name]
            step = danger - warning  # negative when low values are the dangerous ones
            return warning - 1.2 * step + 1.3 * step * (walk + diurnal) + 0.02 * step * b.white(metric.name)
        span = metric.max - metric.min
        level = 0.05 + 0.2 * b.const(f"level-{metric.name}")
        return metric.min + span * (level + 0.06 * (walk + diurnal) + 0.003 * b.white(metric.name))

    return model


MODELS: dict[tuple[str, str], Model] = {
    ("air_quality", "pm25"): pm25,
    ("air_quality", "pm10"): pm10,
    ("air_quality", "co"): co,
    ("air_quality", "o3"): o3,
    ("air_quality", "no2"): no2,
    ("air_quality", "so2"): so2,
    ("weather", "temperature"): temperature,
    ("weather", "humidity"): humidity,
    ("weather", "rainfall"): rainfall,
    ("weather", "wind_speed"): wind_speed,
    ("weather", "wind_direction"): wind_direction,
    ("weather", "pressure"): pressure,
    ("water_level", "level"): flood_level,
    ("traffic", "vehicle_count"): vehicle_count,
    ("traffic", "occupancy"): occupancy,
    ("traffic", "mean_speed"): mean_speed,
    ("noise", "laeq"): laeq,
    ("parking", "capacity"): parking_capacity,
    ("parking", "occupied"): parking_occupied,
    ("waste_bin", "fill_level"): fill_level,
    ("energy", "power"): power,
    ("energy", "energy"): energy,
}


def compute(b: Batch) -> Values:
    """Every metric of the batch's kind, clipped into its registry range."""
    values: Values = {}
    for metric in b.kind.metrics:
        model = MODELS.get((b.kind.id, metric.name)) or generic(metric)
        if metric.name not in values:
            values[metric.name] = model(b, values)
    return {m.name: np.clip(values[m.name], m.min, m.max) for m in b.kind.metrics}


def climate_of(city: str) -> Climate:
    return CLIMATES.get(city, DEFAULT_CLIMATE)
