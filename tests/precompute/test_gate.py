"""The drift gate, end to end: ``precompute run`` of a table space against its live version, on the shared
Ray instance, into a real SQLite store, through the command line as a scheduler calls it."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pytest

from precompute.adapters import open_backend
from precompute.cli import main
from precompute.config import load_config
from precompute.store import State, Versions
from tests.precompute.browser import chart_boxes, chrome
from tests.precompute.conftest import EXAMPLE

pytestmark = pytest.mark.ray


def patients(ids: range, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pa.table(
        {
            "patient": [f"p-{i}" for i in ids],
            "sex": rng.choice(["True", "False", "Unknown"], n).tolist(),
            "mother_age": rng.integers(18, 45, n).astype(np.float64),
            "plurality": rng.choice(["Single(1)", "Twins(2)"], n, p=[0.9, 0.1]).tolist(),
            "gestation_weeks": rng.integers(30, 43, n).astype(np.float64),
        }
    )


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Path]:
    """A table-space job into SQLite whose gate refuses a PSI above 0.25; the CLI's SIGTERM handler is put
    back afterwards."""
    pyarrow.csv.write_csv(patients(range(400)), tmp_path / "patients.csv")
    (tmp_path / "job.toml").write_text(
        f'[model]\npath = "{EXAMPLE / "model"}"\n'
        '[space]\ntype = "table"\npath = "patients.csv"\nkey_column = "patient"\n'
        '[space.columns]\nis_male = "sex"\n'
        '[store]\nurl = "sqlite:///store.db"\n'
        "[verify]\nmax_drift = 0.25\nsample = 300\n"
    )
    previous = signal.getsignal(signal.SIGTERM)
    yield tmp_path / "job.toml"
    signal.signal(signal.SIGTERM, previous)


def run(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    summary = config.parent / "summary.json"
    summary.unlink(missing_ok=True)
    code = main(["run", "--config", str(config), "--quiet", "--summary-json", str(summary), *extra])
    return code, json.loads(summary.read_text())


def test_a_shifted_table_is_refused_kept_and_published_only_on_purpose(
    ray_session: Any, job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, first = run(job)
    assert (code, first["outcome"], first["gate"]["verdict"]) == (0, "published", "skipped")
    assert first["gate"]["reasons"] == ["nothing is live yet: the first version passes"]

    code, again = run(job)  # the same table again: nothing moved
    assert (code, again["outcome"], again["gate"]["verdict"], again["previous"]) == (
        0,
        "published",
        "passed",
        first["version"],
    )
    (same,) = again["drift"]["outputs"]
    assert (same["output"], same["changed"], same["keys"]) == ("weight_pounds", 0, 300)
    assert same["psi"] < 0.01
    assert again["drift"]["keys_only_in_a"] == again["drift"]["keys_only_in_b"] == 0

    # Upstream, two columns were swapped; 50 patients left and 50 new ones came.
    table = patients(range(50, 450))
    shifted = table.set_column(2, "mother_age", table.column("gestation_weeks")).set_column(
        4, "gestation_weeks", table.column("mother_age")
    )
    pyarrow.csv.write_csv(shifted, job.parent / "patients.csv")
    report = job.parent / "reports" / "refused.html"
    capsys.readouterr()
    code, refused = run(job, "--report", str(report))
    out, err = capsys.readouterr()
    assert code == 6
    assert "the drift gate refused the new version, nothing was published: weight_pounds: PSI " in err
    assert f"refused version {refused['version']}: kept for review, {again['version']} stays live" in out
    assert refused["outcome"] == "refused"
    assert refused["gate"]["verdict"] == "refused"
    (moved,) = refused["drift"]["outputs"]
    assert moved["psi"] > 0.25
    assert moved["changed_fraction"] > 0.5
    # Keys on both sides of the change: new patients from the new table's sample, departed ones from the
    # sample that the live version's record kept.
    assert refused["drift"]["keys_only_in_b"] > 0
    assert refused["drift"]["keys_only_in_a"] > 0

    config = load_config(job, env={})
    versions = Versions(open_backend(config.store_url))
    try:
        assert versions.live() == again["version"]
        record = versions.get(refused["version"])
        assert record.state is State.REFUSED
        assert record.rows == 400
        live_answer, refused_answer = (
            versions.backend.read(v, [b"p-100"])[0] for v in (again["version"], record.version)
        )
        assert live_answer != refused_answer  # the live answers are the old ones
    finally:
        versions.backend.close()

    page = report.read_text()
    assert "refused" in page
    assert refused["version"] in page
    with chrome() as driver:
        charts = chart_boxes(driver, report)
    kinds = [" ".join(sorted(c["class"].split())) for c in charts]
    assert kinds.count("chart chart-distribution") == 1
    assert kinds.count("chart chart-changes") == 1
    assert all(c["width"] > 100 and c["height"] > 50 and c["shapes"] > 0 for c in charts)

    capsys.readouterr()
    assert main(["diff", "--config", str(job), again["version"], refused["version"]]) == 0
    compared = capsys.readouterr().out  # the samples the two records kept: a table's keys are in its files
    assert compared.startswith(f"A {again['version']}  ->  B {refused['version']}\n")
    assert "weight_pounds: PSI " in compared
    assert main(["versions", "--config", str(job)]) == 0
    listing = capsys.readouterr().out
    (line,) = [ln for ln in listing.splitlines() if ln.startswith(refused["version"])]
    assert line.split()[1] == "refused"
    assert f"PSI {moved['psi']:.3f}" in line

    assert main(["publish", "--config", str(job), refused["version"]]) == 0
    assert f"published {refused['version']} (previous: {again['version']})" in capsys.readouterr().out
    versions = Versions(open_backend(config.store_url))
    try:
        assert versions.live() == refused["version"]
    finally:
        versions.backend.close()

    # The old table back, over the gate's head, this once.
    pyarrow.csv.write_csv(patients(range(400)), job.parent / "patients.csv")
    code, forced = run(job, "--force")
    assert (code, forced["outcome"], forced["gate"]["verdict"]) == (0, "published", "forced")
    assert forced["gate"]["reasons"][0].startswith("weight_pounds: PSI ")


def test_a_failed_run_writes_its_report_and_summary(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job.write_text(job.read_text().replace(str(EXAMPLE / "model"), str(job.parent / "no-model")))
    report = job.parent / "failed.html"
    code, summary = run(job, "--report", str(report))
    assert code == 3
    assert summary["outcome"] == "failed"
    assert summary["version"] is None
    assert summary["error"].startswith("model error: ")
    assert "check" in summary["seconds"]
    assert "total" in summary["seconds"]
    page = report.read_text()
    assert "failed" in page
    assert "model error" in page
