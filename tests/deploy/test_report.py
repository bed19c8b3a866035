"""`smartcity report` against the real InfluxDB: a small data set in, pages with the right figures out."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.report import NO_DATA, range_text
from deploy.report_queries import TimeRange
from sensors.aqi import BANDS, band_for
from sensors.registry import BUILTIN_DIR, Registry, default_registry, load_registry
from storage import schema
from storage.bootstrap import bootstrap
from storage.line_protocol import Point
from storage.settings import InfluxSettings
from storage.writer import make_writer
from tests.servers import StackHandle

pytestmark = pytest.mark.integration

HOURS = 30
# The latest hourly AQI of each district: every band in Lanna, low values by the sea; San Kamphaeng has none.
AQI_NOW = {
    "mueang-chiang-mai": 230,
    "hang-dong": 150,
    "san-sai": 75,
    "mae-rim": 40,
    "saraphi": 20,
    "mueang-phuket": 30,
    "kathu": 45,
    "thalang": 60,
}
NEW_KIND = """
kinds:
  - id: soil_moisture
    code: sm
    name: {en: Soil moisture, th: ความชื้นในดิน}
    interval_s: 600
    metrics:
      - {name: vwc, unit: "%", min: 0, max: 100, required: true, description: Volumetric water content}
fleet:
  - {city: chiang-mai, kind: soil_moisture, count: 2, vendors: [lanna-envirotech]}
"""


@dataclass(frozen=True)
class Dataset:
    settings: InfluxSettings
    last_hour: datetime  # start of the latest hour written

    @property
    def end(self) -> datetime:
        return self.last_hour + timedelta(hours=1)

    def env(self, stack: StackHandle) -> dict[str, str]:
        return {**stack.env(), "SMARTCITY_INFLUX_DB": self.settings.db}


def aqi_at(district: str, hours_back: int) -> int:
    """A district's AQI `hours_back` hours before the latest hour (haze building up to AQI_NOW)."""
    return max(0, round(AQI_NOW[district] * (1 - 0.02 * hours_back)))


def gauge_level(registry: Registry, sensor_id: str, hours_back: int) -> float:
    """Water levels rising to just above the site's danger level in the latest hour."""
    threshold = registry.threshold(registry.sensors[sensor_id].site, "level")
    assert threshold is not None
    return round(threshold.danger * (1.05 - 0.03 * hours_back), 3)


def vehicles(sensor_id: str, hours_back: int) -> float:
    """Vehicles a counter counted in an hour (the sum of its readings)."""
    return float(600 + 10 * int(sensor_id[-3:]) + 7 * (hours_back % 5))


def counting(registry: Registry, district: str) -> list[str]:
    """The traffic sensors of a district that report (the first of each city is silent)."""
    return [
        s.id
        for s in registry.sensors.values()
        if s.kind == "traffic" and s.district == district and s.id[-4:] != "-001"
    ]


def dataset_points(registry: Registry, last_hour: datetime) -> list[Point]:
    """AQI per district, air quality and traffic per district, Andaman's gauges per sensor, health per sensor."""
    out: list[Point] = []
    sensors = list(registry.sensors.values())
    for back in range(HOURS):
        ms = int((last_hour - timedelta(hours=back)).timestamp() * 1000)
        for district_id, city_id in registry.city_of_district.items():
            cluster = registry.super_cluster_of_city[city_id]
            tags = schema.rollup_tags(
                "district", district_id, super_cluster=cluster, city=city_id, district=district_id
            )
            if district_id in AQI_NOW:
                aqi = aqi_at(district_id, back)
                sub = {"pm25": aqi}
                out.append(
                    schema.aqi_point(
                        tags, aqi=aqi, band=band_for(aqi).number, dominant="pm25", sub_indices=sub, hour_start_ms=ms
                    )
                )
                pm25 = 10.0 + AQI_NOW[district_id] / 4
                out.append(
                    schema.rollup_point(
                        "air_quality",
                        "1h",
                        tags,
                        {
                            "pm25": (pm25, pm25 - 3, pm25 + 3, 60, pm25 * 60),
                            "pm10": (pm25 * 1.6, pm25, pm25 * 2, 60, pm25 * 96),
                        },
                        ms,
                    )
                )
            # The district row sums every counter's vehicles (one reading a minute each); the chart shows
            # the mean counter's hourly total.
            counters = counting(registry, district_id)
            total = sum(vehicles(sensor_id, back) for sensor_id in counters)
            readings = 60 * len(counters)
            stats: dict[str, schema.RollupStats] = {
                "vehicle_count": (total / readings, 0, 40, readings, total),
                "mean_speed": (42.5, 10, 80, 600, 25500),
            }
            out.append(schema.rollup_point("traffic", "1h", tags, stats, ms))
            if district_id == "mueang-chiang-mai":
                out.append(schema.rollup_point("soil_moisture", "1h", tags, {"vwc": (31.5, 30, 33, 6, 189.0)}, ms))
        for sensor in sensors:
            if sensor.kind == "water_level" and sensor.super_cluster == "andaman":
                tags = schema.rollup_tags(
                    "sensor", sensor.id, super_cluster=sensor.super_cluster, city=sensor.city, district=sensor.district
                )
                level = gauge_level(registry, sensor.id, back)
                stats = {"level": (level - 0.1, level - 0.2, level, 60, (level - 0.1) * 60)}
                out.append(schema.rollup_point("water_level", "1h", tags, stats, ms))
            # Waste bins report half of what they should; the first traffic sensor of each city is silent.
            expected = 3600 // registry.kinds[sensor.kind].interval_s
            received = expected // 2 if sensor.kind == "waste_bin" else expected
            if sensor.kind == "traffic" and sensor.id.endswith("-001"):
                received = 0
            # One air-quality sensor reports twice as often as it should; another is silent.
            if sensor.kind == "air_quality" and sensor.id[-4:] in ("-001", "-002"):
                received = 2 * expected if sensor.id.endswith("-001") else 0
            sensor_tags = {name: getattr(sensor, name) for name in ("super_cluster", "city", "district", "site")}
            out.append(
                schema.health_point(
                    {**sensor_tags, "sensor_id": sensor.id, "vendor": sensor.vendor},
                    received=received,
                    expected=expected,
                    flatline=0,
                    outliers=1,
                    hour_start_ms=ms,
                )
            )
    return out


def raw_gauge_points(registry: Registry, last_hour: datetime) -> list[Point]:
    """Andaman's gauges in the latest hour, every 2 min (their interval), rising to the hour's maximum at :58.

    No sensor-level 1m rollup is stored for them (a 1 m window repeats a raw point), so a short-range
    report reads these."""
    out = []
    ms = int(last_hour.timestamp() * 1000)
    for sensor in registry.sensors_of(kind="water_level"):
        if sensor.super_cluster == "andaman":
            tags = {name: getattr(sensor, name) for name in schema.SENSOR_TAGS[:-2]}
            tags.update(sensor_id=sensor.id, vendor=sensor.vendor)
            top = gauge_level(registry, sensor.id, 0)
            for minute in range(0, 60, 2):
                value = round(top - 0.01 * (58 - minute), 3)
                out.append(Point("water_level", tags, {"level": value}, ms + minute * 60_000, "ms"))
    return out


def write_dataset(stack: StackHandle, db: str, registry: Registry) -> Dataset:
    settings = InfluxSettings.from_env(stack.env(), db=db)
    bootstrap(settings)
    last_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    with make_writer(settings, rp=settings.rollup_rp) as writer:
        result = writer.write(dataset_points(registry, last_hour))
    assert not result.dead_letters
    with make_writer(settings, rp=settings.raw_rp) as writer:
        assert not writer.write(raw_gauge_points(registry, last_hour)).dead_letters
    return Dataset(settings, last_hour)


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`smartcity report ARGS` in this process with `env` set; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for key, value in env.items():
            mp.setenv(key, value)
        code = main(["report", *args])
    return code, out.getvalue(), err.getvalue()


def figures(page: str) -> dict[str, dict]:
    match = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert match, "the page embeds no chart data"
    data: dict[str, dict] = json.loads(match.group(1))
    return data


@pytest.fixture(scope="module")
def dataset(stack: StackHandle) -> Dataset:
    registry = load_registry([BUILTIN_DIR])
    return write_dataset(stack, "report_it", registry)


@pytest.fixture(scope="module")
def report(stack: StackHandle, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("report")
    code, stdout, stderr = run(dataset.env(stack), "--out", str(out))
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out / "index.html")
    yield out


def test_index_links_every_super_cluster_with_the_default_range(report: Path, dataset: Dataset) -> None:
    index = (report / "index.html").read_text(encoding="utf-8")
    registry = default_registry()
    for cluster in registry.super_clusters.values():
        assert f'href="{cluster.id}.html"' in index
        assert (report / f"{cluster.id}.html").is_file()
        assert cluster.name.th in index
    # Default: the 24 h up to the end of the latest hour with data, shown in Thai local time.
    expected = TimeRange(dataset.end - timedelta(hours=24), dataset.end)
    assert range_text(expected, __import__("zoneinfo").ZoneInfo("Asia/Bangkok")) in index
    assert "UTC+07:00" in index
    # The worst district of Lanna now, coloured by its band.
    assert "AQI 230" in index and BANDS[4].colour in index


def test_cluster_page_titles_thai_names_and_current_aqi_colours(report: Path) -> None:
    page = (report / "lanna.html").read_text(encoding="utf-8")
    assert "<title>Lanna · ล้านนา — Chiang Mai · เชียงใหม่</title>" in page
    registry = default_registry()
    for district_id, aqi in AQI_NOW.items():
        if registry.super_cluster_of_city[registry.city_of_district[district_id]] != "lanna":
            continue
        district = registry.districts[district_id]
        band = band_for(aqi)
        card = re.search(
            rf'<div class="aqi-card" data-band="(\d)" style="background:(#\w+);[^"]*"><b>{district.name.en} · '
            rf'{district.name.th}</b><span class="aqi">(\d+)</span><span>([^<]*)</span>',
            page,
        )
        assert card, f"no AQI card for {district_id}"
        assert card.groups() == (str(band.number), band.colour, str(aqi), f"{band.label_th} · {band.label_en}")
    # A district without AQI says so instead of showing a number.
    assert re.search(r'nodata-card"><b>San Kamphaeng · สันกำแพง</b>.*?' + NO_DATA, page)
    # The band legend: every colour with its Thai and English label.
    for band in BANDS:
        assert f'<i style="background:{band.colour}"></i>' in page and band.label_th in page
    aqi_chart = figures(page)["lanna-aqi"]
    assert [s["fillcolor"] for s in aqi_chart["layout"]["shapes"]] == [b.colour for b in BANDS]
    latest = {t["name"]: t["y"][-1] for t in aqi_chart["data"]}
    assert latest["Mueang Chiang Mai · เมืองเชียงใหม่"] == 230


def test_every_kind_of_the_fleet_has_a_section_and_empty_charts_say_so(report: Path) -> None:
    registry = default_registry()
    for cluster in registry.super_clusters:
        page = (report / f"{cluster}.html").read_text(encoding="utf-8")
        kinds = {s.kind for s in registry.sensors.values() if s.super_cluster == cluster}
        for kind in kinds:
            assert f'<section id="{kind}">' in page
        assert '<section id="aqi">' in page and '<section id="health">' in page
    andaman = (report / "andaman.html").read_text(encoding="utf-8")
    # Ozone was not written: a note, not a broken chart.
    assert f'<div class="nodata" data-chart="andaman-air_quality-o3">{NO_DATA}</div>' in andaman
    charts = figures(andaman)
    assert "andaman-air_quality-o3" not in charts
    pm25 = charts["andaman-air_quality-pm25"]
    assert {t["name"] for t in pm25["data"]} == {"Mueang Phuket · เมืองภูเก็ต", "Kathu · กะทู้", "Thalang · ถลาง"}
    assert [s["fillcolor"] for s in pm25["layout"]["shapes"]] == [b.colour for b in BANDS]
    assert [s["y0"] for s in pm25["layout"]["shapes"]] == [0, 15.1, 25.1, 37.6, 75.1]
    # Vehicles are counted since the previous reading: a total per hour, the mean of the district's counters.
    traffic = charts["andaman-traffic-vehicle_count"]
    by_name = {t["name"]: t["y"] for t in traffic["data"]}
    kathu = counting(registry, "kathu")
    assert len(kathu) > 1
    assert by_name["Kathu · กะทู้"][-1] == pytest.approx(sum(vehicles(s, 0) for s in kathu) / len(kathu))
    assert len(by_name["Kathu · กะทู้"]) == 24  # the default range: 24 hourly totals
    assert traffic["layout"]["yaxis"]["title"]["text"] == "/h"
    speed = {t["name"]: t["y"] for t in charts["andaman-traffic-mean_speed"]["data"]}
    assert speed["Kathu · กะทู้"][-1] == 42.5  # a level: the mean


def test_flood_gauges_are_drawn_against_the_site_warning_and_danger_levels(report: Path) -> None:
    registry = default_registry()
    charts = figures((report / "andaman.html").read_text(encoding="utf-8"))
    for site_id in ("bang-yai-canal", "patong-canal", "tha-ruea-canal"):
        chart = charts[f"andaman-water_level-level-{site_id}"]
        threshold = registry.threshold(site_id, "level")
        assert threshold is not None
        assert [s["y0"] for s in chart["layout"]["shapes"]] == [threshold.warning, threshold.danger]
        gauges = {s.id for s in registry.sensors.values() if s.site == site_id and s.kind == "water_level"}
        assert {t["name"] for t in chart["data"]} == gauges
        for trace in chart["data"]:
            assert trace["y"][-1] == gauge_level(registry, trace["name"], 0)  # the hourly maximum
    lanna = (report / "lanna.html").read_text(encoding="utf-8")
    assert f'data-chart="lanna-water_level-level-nawarat-bridge">{NO_DATA}' in lanna


def test_sensor_health_by_vendor_and_kind(report: Path) -> None:
    page = (report / "andaman.html").read_text(encoding="utf-8")
    charts = figures(page)
    by_kind = charts["andaman-health-kind"]["data"][0]
    completeness = dict(zip(by_kind["x"], by_kind["y"], strict=True))
    assert completeness["Waste bins · ถังขยะ"] == 50
    # Each sensor counts at most 100 %: the eager sensor does not make up for the silent one.
    assert completeness["Air quality · คุณภาพอากาศ"] == pytest.approx(100 * 39 / 40)
    assert completeness["Traffic · การจราจร"] == pytest.approx(100 * 49 / 50)
    vendors = {t["name"] for t in charts["andaman-health-vendor"]["data"]}
    assert "BinWise Asia" in vendors and "Siam AirSense Co., Ltd." in vendors
    assert re.search(r"<td>Traffic · การจราจร</td>(<td>[^<]*</td>){3}<td>1</td>", page), "one silent traffic sensor"


def test_pages_need_no_network(report: Path) -> None:
    assert (report / "plotly.min.js").stat().st_size > 1_000_000
    for page in report.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        sources = re.findall(r'<script[^>]*\ssrc="([^"]*)"', text) + re.findall(r'<link[^>]*\shref="([^"]*)"', text)
        assert all(src == "plotly.min.js" for src in sources), sources
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text


def test_a_new_kind_in_the_registry_gets_its_section_without_code(
    stack: StackHandle, dataset: Dataset, tmp_path: Path
) -> None:
    extra = tmp_path / "soil.yaml"
    extra.write_text(NEW_KIND, encoding="utf-8")
    out = tmp_path / "report"
    code, _, stderr = run(
        dataset.env(stack), "--out", str(out), "--registry", str(BUILTIN_DIR), "--registry", str(extra)
    )
    assert code == 0, stderr
    lanna = (out / "lanna.html").read_text(encoding="utf-8")
    assert '<section id="soil_moisture"><h2>Soil moisture · ความชื้นในดิน</h2>' in lanna
    chart = figures(lanna)["lanna-soil_moisture-vwc"]
    assert [t["name"] for t in chart["data"]] == ["Mueang Chiang Mai · เมืองเชียงใหม่"]
    assert "soil_moisture" not in (out / "andaman.html").read_text(encoding="utf-8")


def test_explicit_range(stack: StackHandle, dataset: Dataset, tmp_path: Path) -> None:
    start = dataset.last_hour - timedelta(hours=5)
    code, _, stderr = run(
        dataset.env(stack), "--out", str(tmp_path), "--from", start.isoformat(), "--to", dataset.end.isoformat()
    )
    assert code == 0, stderr
    charts = figures((tmp_path / "andaman.html").read_text(encoding="utf-8"))
    assert len(charts["andaman-aqi"]["data"][0]["y"]) == 6
    # Six hours: a gauge's minutes, from raw (no sensor-level 1m rollup is stored for a 2-minute kind).
    registry = default_registry()
    gauges = charts["andaman-water_level-level-patong-canal"]["data"]
    assert gauges
    for trace in gauges:
        values = [y for y in trace["y"] if y is not None]
        assert len(values) == 30 and values[-1] == gauge_level(registry, trace["name"], 0)
    # --from alone: up to the end of the data.
    code, _, stderr = run(dataset.env(stack), "--out", str(tmp_path), "--from", start.isoformat())
    assert code == 0, stderr
    assert figures((tmp_path / "andaman.html").read_text(encoding="utf-8"))["andaman-aqi"] == charts["andaman-aqi"]
    # Bare times are read in the report's time zone.
    code, _, stderr = run(dataset.env(stack), "--out", str(tmp_path), "--from", "2020-01-01", "--to", "2020-01-02")
    assert code == 1
    assert "no data between 2020-01-01 00:00 to 2020-01-02 00:00 (UTC+07:00)" in stderr
    assert "choose another --from/--to" in stderr and stderr.count("\n") == 1


def test_an_empty_database_is_a_one_line_error(stack: StackHandle, tmp_path: Path) -> None:
    settings = InfluxSettings.from_env(stack.env(), db="report_empty")
    bootstrap(settings)
    code, stdout, stderr = run({**stack.env(), "SMARTCITY_INFLUX_DB": "report_empty"}, "--out", str(tmp_path / "r"))
    assert code == 1
    assert stderr.startswith(
        "smartcity: error: no AQI, rollup or sensor-health data in InfluxDB database 'report_empty'"
    )
    assert "smartcity pipeline run" in stderr and not stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--out", "x", "--from", "yesterday"],
        ["--out", "x", "--from", "2026-01-02", "--to", "2026-01-01"],
        ["--out", "x", "--tz", "Mars/Olympus"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *args]) == 2
    assert capsys.readouterr().err.startswith("smartcity report: ")


def test_help() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", "--help"]) == 0
    assert "--out" in out.getvalue() and "--from" in out.getvalue() and "--registry" in out.getvalue()
