"""Charts of a benchmark run, as SVG (no plotting library: plain text that
any browser and GitHub render), drawn from results.json:

- throughput.svg: requests a second of each scenario the seed's FastAPI app
  also serves (GET /test, GET /items/{id}, the counter), the mesh beside
  both references (FastAPI behind nginx, and bench-hello, the floor a Rust
  HTTP server reaches on this machine), at each connection count;
- latency.svg: p50, p90 and p99 of the same rows, on a log scale.

    python3 bench/meshbench/charts.py bench/results.json bench/charts

draws them from a saved run; bench/run.py draws them after every run.
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path

# The scenarios compared, by results.json's "table", with a title each.
PANELS = [
    ("test", "GET /test: the seed's hello"),
    ("items", "GET /items/{id}: one item, cache-aside"),
    ("counters", "The lock-guarded counter: an increment"),
]
COLOURS = {
    "FastAPI (2 uvicorn + nginx)": "#9aa3b2",
    "bench-hello": "#7fb2e5",
    "mesh": "#1f5fae",
}
OTHER = "#5a8f4e"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif"
WIDTH = 960
LABEL_W = 360
ROW_H = 22


def rows_of(results: dict, table: str) -> list[dict]:
    """The rows of one panel, by connections, then references first."""
    order = {name: i for i, name in enumerate(COLOURS)}
    rows = [r for r in results.get("rows", []) if r.get("table") == table]
    return sorted(rows, key=lambda r: (r["connections"], order.get(r["system"], 9), r["label"]))


def label(r: dict) -> str:
    return f"c{r['connections']} · {r['system']}: {r['label']}"


def svg(width: int, height: int, body: list[str], title: str) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        *body,
        "</svg>",
    ]) + "\n"


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start",
         weight: str = "normal", fill: str = "#1d2330") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}" style="{FONT}">{escape(s)}</text>')


def throughput(results: dict) -> str:
    body: list[str] = [text(16, 26, "Throughput (requests a second; longer is better)", 16, weight="600")]
    y = 44
    bar_max = WIDTH - LABEL_W - 190
    for table, title in PANELS:
        rows = rows_of(results, table)
        if not rows:
            continue
        y += 16
        body.append(text(16, y, title, 13, weight="600"))
        y += 8
        top = max(r["rps"] for r in rows) or 1
        fastapi = {r["connections"]: r["rps"] for r in rows if r["system"].startswith("FastAPI")}
        for r in rows:
            w = max(1.0, bar_max * r["rps"] / top)
            colour = COLOURS.get(r["system"], OTHER)
            body.append(text(LABEL_W - 8, y + 15, label(r), 11, anchor="end"))
            body.append(f'<rect x="{LABEL_W}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" '
                        f'rx="2" fill="{colour}"/>')
            note = f"{r['rps']:,.0f}"
            base = fastapi.get(r["connections"])
            if base and not r["system"].startswith("FastAPI"):
                note += f"  ({r['rps'] / base:.1f}x FastAPI)"
            body.append(text(LABEL_W + w + 6, y + 15, note, 11))
            y += ROW_H
    y += 24
    return svg(WIDTH, y, body, "Throughput per scenario, the mesh against both references")


def latency(results: dict) -> str:
    """p50 to p99 on a log axis from 1 ms to the slowest p99."""
    rows = [r for table, _ in PANELS for r in rows_of(results, table)]
    body: list[str] = [text(16, 26, "Latency (ms, log scale; p50 ●, p90 |, p99 ○; shorter is better)",
                            16, weight="600")]
    if not rows:
        return svg(WIDTH, 60, body, "Latency percentiles")
    lo = 0.5
    hi = max(max(r["p99_ms"] for r in rows) * 1.3, 10.0)
    plot_w = WIDTH - LABEL_W - 150

    def x(ms: float) -> float:
        ms = min(max(ms, lo), hi)
        return LABEL_W + plot_w * (math.log10(ms) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    top = 44
    y = top
    for table, title in PANELS:
        panel = rows_of(results, table)
        if not panel:
            continue
        y += 16
        body.append(text(16, y, title, 13, weight="600"))
        y += 8
        for r in panel:
            colour = COLOURS.get(r["system"], OTHER)
            mid = y + ROW_H / 2
            body.append(text(LABEL_W - 8, y + 15, label(r), 11, anchor="end"))
            body.append(f'<line x1="{x(r["p50_ms"]):.1f}" y1="{mid:.1f}" x2="{x(r["p99_ms"]):.1f}" '
                        f'y2="{mid:.1f}" stroke="{colour}" stroke-width="3"/>')
            body.append(f'<circle cx="{x(r["p50_ms"]):.1f}" cy="{mid:.1f}" r="4" fill="{colour}"/>')
            body.append(f'<line x1="{x(r["p90_ms"]):.1f}" y1="{mid - 6:.1f}" x2="{x(r["p90_ms"]):.1f}" '
                        f'y2="{mid + 6:.1f}" stroke="{colour}" stroke-width="2"/>')
            body.append(f'<circle cx="{x(r["p99_ms"]):.1f}" cy="{mid:.1f}" r="4" fill="#ffffff" '
                        f'stroke="{colour}" stroke-width="2"/>')
            body.append(text(x(r["p99_ms"]) + 8, y + 15,
                             f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} / {r['p99_ms']:.1f}", 10, fill="#4a5263"))
            y += ROW_H
    # The axis: decades, with a faint line through every row.
    bottom = y + 6
    decade = 1.0
    while decade <= hi:
        if decade >= lo:
            gx = x(decade)
            body.append(f'<line x1="{gx:.1f}" y1="{top + 4}" x2="{gx:.1f}" y2="{bottom}" '
                        f'stroke="#e3e6ec" stroke-width="1"/>')
            body.append(text(gx, bottom + 16, f"{decade:g} ms", 10, anchor="middle", fill="#6a7385"))
        decade *= 10
    return svg(WIDTH, bottom + 32, body, "Latency percentiles per scenario")


def write(results: dict, out_dir: Path) -> list[Path]:
    """Writes throughput.svg and latency.svg into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("throughput.svg", throughput), ("latency.svg", latency)):
        path = out_dir / name
        path.write_text(draw(results))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        print("usage: charts.py RESULTS_JSON OUT_DIR", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    for path in write(results, Path(argv[1])):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
