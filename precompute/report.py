"""``precompute run --report FILE.html``: the run summary as one page a person can open anywhere.

The page is self-contained (inline CSS, pictures drawn here as inline SVG, no script, no fonts or images
fetched), so it can be attached to a ticket or opened from an artifact store without a network. It shows the
same data as the summary JSON, which it also embeds: nothing is computed here beyond the pictures' geometry.

A failed run's summary holds little (the outcome, the error, the seconds of the stages it reached), so every
field is read defensively and a missing one is shown as missing, never guessed.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

#: Shown for a field the summary does not hold (a failed run stops before most of them are known).
MISSING = "—"
#: Outcome -> badge colour class and words.
OUTCOMES = {
    "published": ("ok", "published"),
    "refused": ("warn", "refused by the drift gate"),
    "failed": ("bad", "failed"),
}
VERDICTS = {"passed": "ok", "forced": "warn", "refused": "warn", "skipped": "info"}
QUANTILES = ("p01", "p10", "p50", "p90", "p99")
#: Where the run happened: (label, summary field).
WHERE = (("config", "config"), ("store", "store"), ("model", "model"), ("model path", "model_path"), ("space", "space"))

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#202124;margin:24px auto;
max-width:1040px;padding:0 16px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;border-bottom:1px solid #dadce0;padding-bottom:4px;
margin-top:28px}h3{font-size:15px;margin:20px 0 6px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.ok{background:#188038}.warn{background:#e37400}.bad{background:#c5221f}.info{background:#5f6368}
.error{background:#fce8e6;border-left:4px solid #c5221f;padding:8px 12px;white-space:pre-wrap;
font-family:ui-monospace,monospace;font-size:13px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}dt{color:#5f6368}
dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{color:#5f6368;font-weight:600}
.over{color:#c5221f;font-weight:600}.note{color:#5f6368}.pictures{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{background:#fafafa;border:1px solid #eee;font-size:11px}svg text{fill:#3c4043}
.stage{fill:#1a73e8}.live{fill:#bdc1c6}.new{fill:rgba(26,115,232,.3);stroke:#1967d2;stroke-width:1}
.change{fill:#8e24aa}.axis{stroke:#5f6368}
pre{background:#f8f9fa;padding:12px;overflow:auto;font-size:12px}footer{margin-top:32px;color:#5f6368}
"""


def render(summary: Mapping[str, Any]) -> str:
    """The whole page of one run's summary (published, refused or failed)."""
    version = summary.get("version")
    title = f"precompute run {version}" if version else "precompute run (no version)"
    body = "".join([_header(summary, title), _stages(summary), _plan(summary), _verification(summary), _drift(summary)])
    dumped = json.dumps(summary, indent=2, default=str)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}<footer><p>This page shows the same data as the run's summary JSON "
        "(<code>precompute run --summary-json</code>); here it is, to copy:</p>"
        f"<details><summary>summary JSON</summary><pre>{_e(dumped)}</pre></details></footer></body></html>\n"
    )


def write(path: Path, summary: Mapping[str, Any]) -> None:
    """Write :func:`render`'s page to ``path`` (UTF-8), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(summary), encoding="utf-8")


# -- sections -------------------------------------------------------------------------------------


def _header(s: Mapping[str, Any], title: str) -> str:
    outcome = s.get("outcome")
    colour, words = OUTCOMES.get(str(outcome), ("info", str(outcome or "unknown")))
    error = f'<div class="error">{_e(s["error"])}</div>' if s.get("error") else ""
    started = s.get("started_at")
    when = (
        datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if _is_number(started) and math.isfinite(started)
        else MISSING
    )
    previous = (
        ("none: nothing was live" if s["previous"] is None else _text(s["previous"])) if "previous" in s else MISSING
    )
    rows = [("started", _e(when)), *((name, _text(s.get(key))) for name, key in WHERE), ("previous (live)", previous)]
    return f'<h1>{_e(title)}</h1><p><span class="badge {colour}">{_e(words)}</span></p>{error}{_dl(rows)}'


def _stages(s: Mapping[str, Any]) -> str:
    seconds = _map(s.get("seconds"))
    stages = [(str(k), v) for k, v in seconds.items() if k != "total" and _is_number(v)]
    chart = _stage_chart(stages) if stages else '<p class="note">no stage was timed</p>'
    dropped = ", ".join(str(v) for v in _list(s.get("dropped"))) or "none"
    totals = [
        ("total", _seconds(seconds.get("total"))),
        ("rows", _num(s.get("rows"))),
        ("rows/s", _num(s.get("rows_per_second"))),
        ("gc dropped", _e(dropped)),
    ]
    misses = _map(s.get("misses"))
    if misses:  # [space] include_misses
        included, recorded, below = (_num(misses.get(k)) for k in ("included", "recorded", "below_min_count"))
        totals.append(("misses included", f"{included} of {recorded} recorded ({below} below the minimum count)"))
    return f"<h2>Stages</h2>{chart}{_dl(totals)}"


def _plan(s: Mapping[str, Any]) -> str:
    facts = _dl([("plan", _text(s.get("plan"))), ("write task GPUs", _num(s.get("write_task_gpus")))])
    head = ("node", "address", "CPUs", "GPUs", "actors", "rows scored", "rows written")
    rows = [
        [_e(str(n.get("id") or MISSING)[:8]), _text(n.get("address"))]
        + [_num(n.get(k)) for k in ("cpus", "gpus", "actors", "rows_scored", "rows_written")]
        for n in _list(s.get("nodes"))
        if isinstance(n, Mapping)
    ]
    nodes = _table(head, rows) if rows else '<p class="note">no nodes recorded</p>'
    return f"<h2>Plan</h2>{facts}{nodes}"


def _verification(s: Mapping[str, Any]) -> str:
    v = s.get("verification")
    if not isinstance(v, Mapping):
        return '<h2>Verification</h2><p class="note">not recorded: the run did not reach it</p>'
    count = "not counted" if v.get("store_count") is None else _num(v.get("store_count"))
    rows = [
        ("rows written", f"{_num(v.get('rows_written'))} of {_num(v.get('expected'))} expected"),
        ("store count", count),
        ("golden keys", f"{_num(v.get('golden_matched'))} matched of {_num(v.get('golden_keys'))} checked"),
    ]
    return f"<h2>Verification</h2>{_dl(rows)}"


def _drift(s: Mapping[str, Any]) -> str:
    gate = _map(s.get("gate"))
    d = s.get("drift")
    out = ["<h2>Drift against the live version</h2>"]
    if not isinstance(d, Mapping):
        why = "; ".join(str(r) for r in _list(gate.get("reasons")))
        skipped = gate.get("verdict") == "skipped"
        out.append(f'<p class="note">not compared{": " + _e(why) if skipped and why else ""}</p>')
    else:
        out.append(
            _dl(
                [
                    ("A (live)", _text(d.get("version_a"))),
                    ("B (new)", _text(d.get("version_b"))),
                    ("sample", f"{_num(d.get('sample'))} of {_num(d.get('space_size'))} keys"),
                    ("cost", f"{_num(d.get('keys_read'))} keys read in {_seconds(d.get('seconds'))}"),
                    ("keys only in A", _num(d.get("keys_only_in_a"))),
                    ("keys only in B", _num(d.get("keys_only_in_b"))),
                    ("keys in neither", _num(d.get("keys_in_neither"))),
                    ("outputs only in A", _e(", ".join(map(str, _list(d.get("outputs_only_in_a")))) or "none")),
                    ("outputs only in B", _e(", ".join(map(str, _list(d.get("outputs_only_in_b")))) or "none")),
                ]
            )
        )
    if gate:
        verdict = str(gate.get("verdict") or "unknown")
        reasons = "".join(f"<li>{_e(r)}</li>" for r in _list(gate.get("reasons")))
        limits = [
            ("max drift (PSI)", _num(gate["max_drift"]) if gate.get("max_drift") is not None else "off"),
            (
                "max changed",
                _pct(gate["max_changed_fraction"]) if gate.get("max_changed_fraction") is not None else "off",
            ),
            ("verdict", f'<span class="badge {VERDICTS.get(verdict, "info")}">{_e(verdict)}</span>'),
        ]
        out.append(f"<h3>Gate</h3>{_dl(limits)}{f'<ul>{reasons}</ul>' if reasons else ''}")
    if isinstance(d, Mapping):
        out += [_output(o, gate) for o in _list(d.get("outputs")) if isinstance(o, Mapping)]
    return "".join(out)


def _output(o: Mapping[str, Any], gate: Mapping[str, Any]) -> str:
    name = str(o.get("output") or MISSING)
    psi, fraction = o.get("psi"), o.get("changed_fraction")
    over_psi = _over(psi, gate.get("max_drift"))
    over_changed = _over(fraction, gate.get("max_changed_fraction"))
    facts = _dl(
        [
            ("keys in both", _num(o.get("keys"))),
            ("PSI", f'<span class="{over_psi}">{_num(psi)}</span>'),
            (
                "changed",
                f'<span class="{over_changed}">{_num(o.get("changed"))} ({_pct(fraction)})</span> beyond '
                f"rel {_num(o.get('rel_tol'))} / abs {_num(o.get('abs_tol'))}",
            ),
        ]
    )
    rows = []
    for label, cell in [("mean", o.get("mean")), *((q, _map(o.get("quantiles")).get(q)) for q in QUANTILES)]:
        ab = _map(cell)
        rows.append([label, _num(ab.get("a")), _num(ab.get("b")), _num(ab.get("shift"), signed=True)])
    figures = _table(("", "A (live)", "B (new)", "shift (B - A)"), rows)
    h, c = _map(o.get("histogram")), _map(o.get("changes"))
    distribution = _histogram(
        "distribution",
        f"{name}: scores of B (new) over A (live)",
        _list(h.get("edges")),
        [("A (live)", "live", _list(h.get("a"))), ("B (new)", "new", _list(h.get("b")))],
        f"{name} score",
    )
    moved = [n for n in _list(c.get("counts")) if _is_number(n)]
    # The keys that did not move pile up in one bin: when it holds most keys, a linear scale flattens the rest.
    changes = _histogram(
        "changes",
        f"{name}: change per key, B (new) - A (live)",
        _list(c.get("edges")),
        [("keys", "change", _list(c.get("counts")))],
        f"{name}: B - A",
        log=bool(moved) and max(moved) > sum(moved) / 2,
    )
    return f'<h3>{_e(name)}</h3>{facts}{figures}<div class="pictures">{distribution}{changes}</div>'


# -- pictures -------------------------------------------------------------------------------------


def _svg(kind: str, label: str, width: int, height: int, body: str) -> str:
    """The frame every picture shares: found by tests through its class, by screen readers through its label."""
    return (
        f'<svg class="chart chart-{kind}" role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{_e(label)}</title>{body}</svg>'
    )


def _stage_chart(stages: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars, one per stage in run order, the seconds written after each."""
    left, bar_w, row = 70, 520, 22
    top = max(float(v) for _, v in stages)
    parts = []
    for i, (name, secs) in enumerate(stages):
        y = 8 + i * row
        w = float(secs) / top * bar_w if top > 0 else 0.0
        w = max(w, 1.0) if secs > 0 else w
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{_e(name)}</text>'
            f'<rect class="bar stage" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}"/>'
            f'<text x="{left + w + 6:.1f}" y="{y + 14}">{_seconds(secs)}</text>'
        )
    height = 16 + len(stages) * row
    return _svg("stages", "seconds per stage", left + bar_w + 90, height, "".join(parts))


def _histogram(
    kind: str,
    label: str,
    edges: Sequence[Any],
    series: Sequence[tuple[str, str, Sequence[Any]]],
    xlabel: str,
    log: bool = False,
) -> str:
    """Bars over ``edges`` (n + 1) for each series of n counts, drawn in order on top of each other.

    Bins are placed by their edges; edges that do not rise (all equal, not numbers) give bins of equal width.
    A non-empty bin is at least 1 px high, so that a handful of keys in a tail stays visible; ``log`` scales the
    heights by log(1 + count) instead of count.
    """
    width, height, left, right, top, bottom = 500, 230, 52, 14, 30, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [float(e) if _is_number(e) else math.nan for e in edges]
    drawn = [(n, cls, [float(c) if _is_number(c) else 0.0 for c in counts]) for n, cls, counts in series]
    drawn = [d for d in drawn if d[2] and len(d[2]) == len(values) - 1]
    parts = [
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>'
    ]
    if not drawn:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">no data</text>')
        return _svg(kind, label, width, height, "".join(parts))
    n = len(values) - 1
    lo, hi = values[0], values[-1]
    rising = all(math.isfinite(v) for v in values) and hi > lo and all(b >= a for a, b in itertools.pairwise(values))
    xs = [left + ((v - lo) / (hi - lo) if rising else i / n) * plot_w for i, v in enumerate(values)]
    peak = max(max(counts) for _, _, counts in drawn)
    for _, cls, counts in drawn:
        for i, count in enumerate(counts):
            if count <= 0 or peak <= 0:
                continue
            share = math.log1p(count) / math.log1p(peak) if log else count / peak
            h = max(share * plot_h, 1.0)
            x, w = xs[i], max(xs[i + 1] - xs[i], 0.5)
            parts.append(
                f'<rect class="bar {cls}" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{w:.1f}" height="{h:.1f}"/>'
            )
    ticks = [(xs[0], values[0], "start"), (xs[-1], values[-1], "end")]
    if rising and lo < 0 < hi and 0.1 < -lo / (hi - lo) < 0.9:
        ticks.append((left + -lo / (hi - lo) * plot_w, 0.0, "middle"))
    elif n > 1:
        ticks.append(((xs[0] + xs[-1]) / 2, (values[0] + values[-1]) / 2, "middle"))
    for x, value, anchor in ticks:
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">{_num(value)}</text>'
        )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{_e(xlabel)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{_num(peak)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left}" y="{top - 12}">keys per bin{", log scale" if log else ""}</text>')
    if len(series) > 1:  # the legend names what is drawn, one side only where the other is empty
        for i, (name, cls, _) in enumerate(drawn):
            x = width - right - 170 + i * 85
            parts.append(f'<rect class="{cls}" x="{x}" y="{top - 22}" width="12" height="12"/>')
            parts.append(f'<text x="{x + 16}" y="{top - 12}">{_e(name)}</text>')
    return _svg(kind, label, width, height, "".join(parts))


# -- cells ----------------------------------------------------------------------------------------


def _dl(rows: Sequence[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already escaped."""
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; the cells are HTML already escaped, the head is text."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        f"<table><tr>{th}</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def _e(value: object) -> str:
    return html.escape(str(value))


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else _e(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: object, signed: bool = False) -> str:
    """For people: integers with thousands separators, floats to 4 significant digits (whole from 1,000)."""
    sign = "+" if signed else ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:{sign},}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return _e(value)
        return f"{value:{sign},.0f}" if abs(value) >= 1000 else f"{value:{sign}.4g}"
    return _text(value)


def _pct(fraction: object) -> str:
    return f"{_num(fraction * 100)}%" if _is_number(fraction) else MISSING


def _seconds(value: object) -> str:
    return f"{_num(float(value))} s" if _is_number(value) else MISSING


def _over(value: object, limit: object) -> str:
    """The CSS class of a figure beyond its gate limit."""
    return "over" if _is_number(value) and _is_number(limit) and value > limit else ""


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []
