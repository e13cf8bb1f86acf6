"""The HTML run report: what a published, a refused and a failed run's page says, that it is self-contained,
that odd histograms still draw, and that a real browser renders every picture."""

from __future__ import annotations

import ast
import copy
import html
import json
import math
import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from precompute import report
from precompute.drift import Comparison, Diff
from tests.precompute.browser import chart_boxes, chrome, full_page_screenshot, network_requests

SECONDS = {"check": 1.2, "ray": 3.4, "lock": 0.1, "score": 10.0, "verify": 0.5, "drift": 0.2, "publish": 0.01}
SECONDS |= {"gc": 0.02, "total": 15.5}


def _output(name: str, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> dict[str, Any]:
    """One output's figures as the drift module computes them, with the two histograms of the run's summary."""
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), 41)
    moved = b - a
    change_edges = np.linspace(moved.min(), moved.max(), 31)
    return {
        **Comparison.of(name, a, b).to_dict(),
        "histogram": {
            "edges": edges.tolist(),
            "a": np.histogram(a, edges)[0].tolist(),
            "b": np.histogram(b, edges)[0].tolist(),
        },
        "changes": {"edges": change_edges.tolist(), "counts": np.histogram(moved, change_edges)[0].tolist()},
    }


def published() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    weight = rng.normal(7.2, 1.1, 10_000)
    risk = rng.beta(2, 5, 10_000)
    outputs = [
        _output("weight_pounds", weight, weight + rng.normal(0.25, 0.1, weight.size)),
        _output("risk", risk, np.where(rng.random(risk.size) < 0.9, risk, risk * 1.3)),
    ]
    diff = Diff("v20261202-0100", "v20261202-0300", 1_234_567, 10_000, 20_000, 0.84, 3, 0, 1, ())
    nodes = [
        {"id": "a1b2c3d4e5f6", "address": "10.0.0.1", "cpus": 16.0, "gpus": 0.0, "actors": 3}
        | {"rows_scored": 617_283, "rows_written": 617_283},
        {"id": "ffeeddccbbaa", "address": "10.0.0.2", "cpus": 8.0, "gpus": 1.0, "actors": 1}
        | {"rows_scored": 617_284, "rows_written": 617_284},
    ]
    return {
        "outcome": "published",
        "error": None,
        "version": "v20261202-0300",
        "previous": "v20261202-0100",
        "started_at": 1796181600.0,  # 2026-12-02 03:20:00 UTC
        "rows": 1_234_567,
        "rows_per_second": 79_649.5,
        "seconds": dict(SECONDS),
        "model": "sha256:9f86d081884c",
        "model_path": "examples/babyweight/model",
        "store": "sqlite:///var/store.db",
        "config": "examples/babyweight/precompute.toml",
        "space": "grid of 4 inputs, 1,234,567 keys",
        "plan": "4 actors (3 + 1 GPU), batch 4096",
        "write_task_gpus": 0,
        "dropped": ["v20261201-2300"],
        "nodes": nodes,
        "verification": {"rows_written": 1_234_567, "expected": 1_234_567, "store_count": None}
        | {"golden_keys": 64, "golden_matched": 64},
        "gate": {"max_drift": 0.25, "max_changed_fraction": None, "verdict": "passed", "reasons": []},
        "drift": {**diff.to_dict(), "outputs": outputs},
    }


def refused() -> dict[str, Any]:
    summary = published()
    summary |= {"outcome": "refused", "previous": "v20261202-0100", "dropped": []}
    summary["gate"] = {
        "max_drift": 0.01,
        "max_changed_fraction": 0.05,
        "verdict": "refused",
        "reasons": [
            f"{o['output']}: {o['changed_fraction']:.2%} of the keys changed, above 5.00%"
            for o in summary["drift"]["outputs"]
        ],
    }
    return summary


def failed() -> dict[str, Any]:
    return {
        "outcome": "failed",
        "error": "store unreachable: <script>alert('x')</script> & more",
        "seconds": {"check": 0.31},
        "config": "precompute.toml",
        "store": "redis://cache:6379/0",
    }


class _Page(HTMLParser):
    """The SVG pictures of a page (class, title, the attributes of their rects) and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.charts: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._in_title = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "svg":
            self.charts.append({"class": attributes.get("class"), "title": "", "rects": []})
        elif tag == "rect" and self.charts:
            self.charts[-1]["rects"].append(attributes)
        self._in_title = tag == "title" and bool(self.charts)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.charts[-1]["title"] += data
        self.text.append(data)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.charts if c["class"] == f"chart chart-{kind}"]


# -- the page, as text ----------------------------------------------------------------------------


def test_a_published_run_shows_its_outcome_stages_figures_and_two_pictures_per_output() -> None:
    summary = published()
    page = report.render(summary)
    parsed = _Page(page)
    assert "<title>precompute run v20261202-0300</title>" in page
    assert '<span class="badge ok">published</span>' in page
    assert "2026-12-02 03:20:00 UTC" in page
    (stages,) = parsed.kind("stages")
    bars = [r for r in stages["rects"] if "bar" in (r.get("class") or "")]
    assert len(bars) == len(SECONDS) - 1  # every stage but the total
    for stage, seconds in SECONDS.items():
        assert f">{stage}<" in page or stage == "total"
        assert f"{seconds:g} s" in page
    assert "1,234,567" in page  # rows
    assert "79,650" in page  # rows/s, whole from 1,000
    assert "a1b2c3d4<" in page  # the node id, first 8 characters
    assert "not counted" in page  # the store count
    assert "64 matched of 64 checked" in page
    for output in summary["drift"]["outputs"]:
        assert f"<h3>{output['output']}</h3>" in page
        assert f"{output['psi']:.4g}" in page  # 4 significant digits
        assert f"{output['changed_fraction'] * 100:.4g}%" in page
        assert f"{output['quantiles']['p99']['shift']:+.4g}" in page
    assert len(parsed.kind("distribution")) == len(parsed.kind("changes")) == 2
    for chart in parsed.charts:
        assert chart["title"]
        assert chart["rects"]


def test_a_distribution_picture_draws_every_non_empty_bin_of_both_versions() -> None:
    summary = published()
    output = summary["drift"]["outputs"][0]
    distribution = _Page(report.render(summary)).kind("distribution")[0]
    drawn = [r["class"] for r in distribution["rects"] if "bar" in (r.get("class") or "")]
    histogram = output["histogram"]
    assert drawn.count("bar live") == sum(1 for c in histogram["a"] if c > 0)
    assert drawn.count("bar new") == sum(1 for c in histogram["b"] if c > 0)
    assert distribution["title"] == "weight_pounds: scores of B (new) over A (live)"


def test_a_refused_run_names_the_gate_its_limits_and_reasons() -> None:
    page = report.render(refused())
    assert '<span class="badge warn">refused by the drift gate</span>' in page
    assert "<li>risk: 10.06% of the keys changed, above 5.00%</li>" in page
    assert '<dd><span class="badge warn">refused</span></dd>' in page
    assert "<dd>5%</dd>" in page  # max changed fraction
    assert '<span class="over">' in page  # a PSI above the limit is marked


def test_a_failed_run_with_almost_nothing_renders_and_escapes_its_error() -> None:
    page = report.render(failed())
    parsed = _Page(page)
    assert '<span class="badge bad">failed</span>' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    assert "precompute run (no version)" in page
    assert "not recorded: the run did not reach it" in page
    assert [c["class"] for c in parsed.charts] == ["chart chart-stages"]
    assert "redis://cache:6379/0" in page


def test_the_first_version_says_why_drift_was_not_compared() -> None:
    summary = published() | {"previous": None, "drift": None}
    summary["gate"] = {
        "max_drift": None,
        "max_changed_fraction": None,
        "verdict": "skipped",
        "reasons": ["nothing is live yet: the first version passes"],
    }
    page = report.render(summary)
    assert "not compared: nothing is live yet: the first version passes" in page
    assert "none: nothing was live" in page
    assert page.count("<dd>off</dd>") == 2
    assert not _Page(page).kind("distribution")


@pytest.mark.parametrize("summary", [published(), refused(), failed()], ids=["published", "refused", "failed"])
def test_the_page_fetches_nothing_and_embeds_the_summary(summary: dict[str, Any]) -> None:
    page = report.render(summary)
    assert not re.search(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"<(?:script|link|img|iframe)\b|@import|url\(", page, re.IGNORECASE)
    embedded = re.search(r"<details><summary>summary JSON</summary><pre>(.*?)</pre></details>", page, re.DOTALL)
    assert embedded
    assert json.loads(html.unescape(embedded.group(1))) == summary


def test_the_page_is_drawn_with_the_standard_library_only() -> None:
    tree = ast.parse(Path(report.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported), imported


def test_write_creates_the_folder_and_writes_utf8(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "run.html"
    report.write(path, failed())
    assert path.read_bytes().decode("utf-8") == report.render(failed())
    assert report.MISSING in path.read_text(encoding="utf-8")


# -- odd histograms -------------------------------------------------------------------------------


def _with_histograms(histogram: Any, changes: Any) -> dict[str, Any]:
    summary = copy.deepcopy(published())
    summary["drift"]["outputs"] = summary["drift"]["outputs"][:1]
    summary["drift"]["outputs"][0] |= {"histogram": histogram, "changes": changes}
    return summary


ODD = {
    "one bin": ({"edges": [0.0, 1.0], "a": [5], "b": [7]}, {"edges": [-1.0, 1.0], "counts": [12]}),
    "all zero": ({"edges": [0.0, 0.5, 1.0], "a": [0, 0], "b": [0, 0]}, {"edges": [0.0, 1.0], "counts": [0]}),
    "equal edges": ({"edges": [2.0, 2.0, 2.0], "a": [3, 0], "b": [0, 3]}, {"edges": [0.0, 0.0], "counts": [10]}),
    "one side empty": ({"edges": [0.0, 1.0, 2.0], "a": [], "b": [4, 1]}, {"edges": [], "counts": []}),
    "lengths disagree": ({"edges": [0.0, 1.0], "a": [1, 2, 3], "b": [1]}, {"edges": [0.0, 1.0, 2.0], "counts": [1]}),
    "not numbers": ({"edges": [None, "x", math.nan], "a": [1, None], "b": [True, 2]}, {"edges": [1.0, 0.0]}),
    "missing": (None, "not a histogram"),
}


@pytest.mark.parametrize(("histogram", "changes"), ODD.values(), ids=ODD.keys())
def test_odd_histograms_still_draw_a_picture_with_finite_geometry(histogram: Any, changes: Any) -> None:
    parsed = _Page(report.render(_with_histograms(histogram, changes)))
    assert len(parsed.kind("distribution")) == len(parsed.kind("changes")) == 1
    for chart in parsed.kind("distribution") + parsed.kind("changes"):
        for rect in chart["rects"]:
            sizes = [float(rect[name]) for name in ("x", "y", "width", "height")]
            assert all(math.isfinite(v) for v in sizes), rect
            assert sizes[2] >= 0
            assert sizes[3] >= 0


def test_an_empty_picture_says_so() -> None:
    page = report.render(_with_histograms(None, None))
    assert page.count(">no data</text>") == 2


def test_a_changes_picture_turns_to_a_log_scale_when_most_keys_did_not_move() -> None:
    page = report.render(published())
    weight, risk = re.findall(r'<svg class="chart chart-changes".*?</svg>', page)
    assert "keys per bin<" in weight  # every key moved: a bell on a linear scale
    assert "keys per bin, log scale<" in risk  # 90% of the keys in the bin at 0


# -- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    with chrome() as opened:
        yield opened


def test_a_browser_renders_every_picture_with_bars_and_fetches_nothing(driver: WebDriver, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    report.write(path, refused())
    charts = chart_boxes(driver, path)
    expected = ["chart chart-stages", *["chart chart-distribution", "chart chart-changes"] * 2]
    assert [c["class"] for c in charts] == expected
    for chart in charts:
        assert chart["width"] > 0, chart
        assert chart["height"] > 0, chart
        assert chart["bars"] > 0, chart
        assert chart["shapes"] >= chart["bars"], chart
        assert chart["clipped"] == [], chart  # every label inside its picture
    for chart in charts[1::2]:  # the distributions: live and new in two different colours
        assert len(chart["fills"]) == 2, chart
    assert network_requests(driver) == []
    shot = full_page_screenshot(driver, tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_that_included_misses_says_how_many() -> None:
    summary = {
        **published(),
        "misses_included": 12,
        "misses": {"recorded": 40, "included": 12, "below_min_count": 25, "min_count": 3},
    }
    text = " ".join(_Page(report.render(summary)).text)
    assert "misses included" in text
    assert "12 of 40 recorded (25 below the minimum count)" in text
    assert "misses included" not in " ".join(_Page(report.render(published())).text)
