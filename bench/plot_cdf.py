#!/usr/bin/env python3
"""The fault latency CDF, drawn from bench JSON (bench/run.sh or bench/ab_compare.sh JSON=FILE).

    bench/plot_cdf.py -o docs/fault-latency-cdf.svg build/bench/run-*.json
    bench/plot_cdf.py -o before-after.svg before.json=before after.json=after
    bench/plot_cdf.py --metric vcpu_stall ...      (the vCPU stalls instead of the agent's faults)
    bench/plot_cdf.py --only '\[kvm\]' ...          (the curves whose label matches)

One curve per file label, scenario, side (ab_compare's before/after) and vCPU kind (one colour
per scenario, dashed where host threads stood in for the vCPUs): at each quantile the median over the runs of that run's latency, each run drawn faintly behind it. The
x axis is the latency on a log scale; the upper panel is the CDF (the share of faults that took
at most x), the lower one its tail on a log scale (the share that took longer than x, down to
0.1%). Each run reports the latency at fixed quantiles (docs/control-api.md,
fault_latency_cdf_us), so the curve joins those points. Python's standard library only; the SVG
is written by hand, as `lazymig demo --plot` does. Malformed input ends with status 2 and a
message naming the file and the field.
"""
import argparse
import json
import math
import re
import statistics
import sys

FIELDS = {"fault": "fault_latency_cdf_us", "vcpu_stall": "vcpu_stall_cdf_us"}
TITLES = {"fault": "Demand fault latency (destination agent, fault to wake)",
          "vcpu_stall": "vCPU stalls (accesses that faulted, as the guest saw them)"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22"]
WIDTH, LEFT, RIGHT, TOP, BOTTOM = 1040, 70, 290, 60, 50
CDF_HEIGHT, TAIL_HEIGHT, GAP = 330, 230, 40
TAIL_FLOOR = 1e-3  # the lowest share the tail panel shows (the 99.9th percentile)


class InputError(Exception):
    """Bench JSON that cannot be drawn; the message names the file and the field."""


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: expected a number, found {json.dumps(value)}")
    return float(value)


def _points(run, field, where):
    """A run's CDF as [(q, us)]; [] when the run served no fault."""
    if not isinstance(run, dict):
        raise InputError(f"{where}: expected a demo report (an object), found {type(run).__name__}")
    if field not in run:
        raise InputError(f"{where}.{field}: missing (a build from before the demo reported it?)")
    cdf = run[field]
    if not isinstance(cdf, list):
        raise InputError(f"{where}.{field}: expected a list of {{q, us}}, found {json.dumps(cdf)}")
    points = []
    for k, point in enumerate(cdf):
        at = f"{where}.{field}[{k}]"
        if not isinstance(point, dict):
            raise InputError(f"{at}: expected an object {{q, us}}, found {json.dumps(point)}")
        for key in ("q", "us"):
            if key not in point:
                raise InputError(f"{at}.{key}: missing")
        q, us = _number(point["q"], f"{at}.q"), _number(point["us"], f"{at}.us")
        if not 0 <= q <= 1:
            raise InputError(f"{at}.q: a quantile lies in [0, 1], found {q}")
        if us < 0:
            raise InputError(f"{at}.us: a latency is not negative, found {us}")
        if points and q <= points[-1][0]:
            raise InputError(f"{at}.q: the quantiles must rise, {q} follows {points[-1][0]}")
        points.append((q, us))
    return points


def load(path, label, field):
    """The curves of one bench JSON file: [{label, runs: [[(q, us)]], median: [(q, us)]}]."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise InputError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise InputError(f"{path}: results: missing or not a list (is this bench/run.sh's JSON?)")
    curves = []
    for i, result in enumerate(doc["results"]):
        where = f"{path}: results[{i}]"
        if not isinstance(result, dict):
            raise InputError(f"{where}: expected an object, found {json.dumps(result)}")
        if not isinstance(result.get("scenario"), str):
            raise InputError(f"{where}.scenario: missing or not a string")
        if not isinstance(result.get("runs"), list):
            raise InputError(f"{where}.runs: missing or not a list")
        runs = [_points(r, field, f"{where}.runs[{j}]") for j, r in enumerate(result["runs"])]
        runs = [r for r in runs if r]
        kinds = sorted({r.get("vcpus", "") for r in result["runs"] if isinstance(r, dict)} - {""})
        name = " ".join(x for x in (label, result["scenario"], result.get("side", "")) if x)
        kind = "/".join(kinds) or result.get("vcpus_asked", "")
        name += f" [{kind}]" if kind else ""
        if not runs:
            print(f"plot_cdf.py: {where}: no run with {field} points ({name}); left out",
                  file=sys.stderr)
            continue
        quantiles = [q for q, _ in runs[0]]
        for j, r in enumerate(runs):
            if [q for q, _ in r] != quantiles:
                raise InputError(f"{where}.runs[{j}].{field}: quantiles differ from the first run's")
        median = [(q, statistics.median(r[k][1] for r in runs)) for k, q in enumerate(quantiles)]
        curves.append({"label": name, "group": name.rsplit(" [", 1)[0], "kind": kind,
                       "runs": runs, "median": median})
    return doc, curves


def conditions(path, label, doc):
    """One line saying where a file's numbers come from."""
    host = doc.get("host") if isinstance(doc.get("host"), dict) else {}
    load = lambda key: f"{host[key][0]:g}" if host.get(key) else "?"
    parts = [f"{label or path}: {doc.get('bench', '?')} {doc.get('size', '?')}",
             f"{doc.get('runs', '?')} runs", f"git {doc.get('git', '?')}",
             str(doc.get("started", "?")), f"{host.get('cpus', '?')} CPUs",
             f"1-min load average {load('loadavg_start')} -> {load('loadavg_end')}"]
    return ", ".join(parts)


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def us_label(us):
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} µs"


def render(curves, title, notes):
    """The SVG document: the CDF above, its tail below, sharing a log latency axis."""
    values = [us for c in curves for r in c["runs"] for _, us in r if us > 0]
    lo = 10 ** math.floor(math.log10(min(values))) if values else 1
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 10
    hi = max(hi, lo * 10)
    plot_w = WIDTH - LEFT - RIGHT
    notes_h = 16 * len(notes)
    cdf_top = TOP + notes_h
    tail_top = cdf_top + CDF_HEIGHT + GAP
    height = tail_top + TAIL_HEIGHT + BOTTOM
    sx = lambda us: LEFT + (math.log10(max(us, lo)) - math.log10(lo)) / math.log10(hi / lo) * plot_w
    cdf_y = lambda q: cdf_top + (1 - q) * CDF_HEIGHT
    tail_y = lambda share: tail_top + (-math.log10(max(share, TAIL_FLOOR))) / 3 * TAIL_HEIGHT
    f = lambda v: f"{v:.1f}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{f(height)}" '
           'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>']
    for k, note in enumerate(notes):
        out.append(f'<text x="{WIDTH / 2}" y="{40 + 16 * k}" text-anchor="middle" font-size="11" '
                   f'fill="#555">{esc(note)}</text>')
    # Grids: latency ticks at 1, 2, 5 x 10^k; the CDF every 10%; the tail every decade.
    ticks = [m * 10 ** e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
    panels = [(cdf_top, CDF_HEIGHT, "share of faults that took at most this long (CDF)",
               [(cdf_y(q / 10), f"{q * 10}%") for q in range(11)]),
              (tail_top, TAIL_HEIGHT, "share that took longer (the tail, log scale)",
               [(tail_y(10 ** -d), f"{100 * 10 ** -d:g}%") for d in range(4)])]
    for top, h, name, rows in panels:
        out.append(f'<text x="{LEFT}" y="{top - 8}" font-weight="bold">{esc(name)}</text>')
        for y, text in rows:
            out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{f(y)}" y2="{f(y)}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{LEFT - 6}" y="{f(y + 4)}" text-anchor="end">{text}</text>')
        for t in ticks:
            shade = "#d0d0d0" if math.log10(t).is_integer() else "#f0f0f0"
            out.append(f'<line x1="{f(sx(t))}" x2="{f(sx(t))}" y1="{top}" y2="{top + h}" stroke="{shade}"/>')
        out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{h}" fill="none" stroke="#333"/>')
    decades = round(math.log10(hi / lo))
    for t in ticks:  # every decade named; 2 and 5 too where there is room
        if math.log10(t).is_integer() or decades <= 3:
            out.append(f'<text x="{f(sx(t))}" y="{tail_top + TAIL_HEIGHT + 16}" '
                       f'text-anchor="middle">{esc(us_label(t))}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{tail_top + TAIL_HEIGHT + 38}" '
               'text-anchor="middle">latency (log scale)</text>')
    groups = list(dict.fromkeys(c["group"] for c in curves))
    for n, c in enumerate(curves):
        # One colour per scenario (and file, side); host threads standing in for vCPUs dashed.
        color = COLORS[groups.index(c["group"]) % len(COLORS)]
        dash = ' stroke-dasharray="6,3"' if c["kind"] == "threads" else ""
        out.append(f'<g class="curve" data-label="{esc(c["label"])}" stroke="{color}" '
                   f'fill="none"{dash}>')
        for points, width, opacity in [(r, 0.8, 0.3) for r in c["runs"]] + [(c["median"], 2, 1)]:
            cdf = " ".join(f"{f(sx(us))},{f(cdf_y(q))}" for q, us in points)
            tail = " ".join(f"{f(sx(us))},{f(tail_y(1 - q))}" for q, us in points if 1 - q >= TAIL_FLOOR * 0.99)
            for pts in (cdf, tail):
                out.append(f'<polyline stroke-width="{width}" stroke-opacity="{opacity}" points="{pts}"/>')
        out.append("</g>")
        y = cdf_top + 14 + 18 * n
        out.append(f'<line x1="{LEFT + plot_w + 12}" x2="{LEFT + plot_w + 32}" y1="{y - 4}" '
                   f'y2="{y - 4}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{LEFT + plot_w + 38}" y="{y}">{esc(c["label"])}</text>')
    legend_end = cdf_top + 14 + 18 * len(curves)
    out.append(f'<text x="{LEFT + plot_w + 12}" y="{legend_end + 4}" font-size="11" fill="#555">'
               "bold: median of the runs; faint: each run</text>")
    for k, line in enumerate(["[kvm]: KVM vCPUs", "[threads], dashed: host threads as vCPUs"]):
        out.append(f'<text x="{LEFT + plot_w + 12}" y="{legend_end + 20 + 16 * k}" font-size="11" '
                   f'fill="#555">{esc(line)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", metavar="BENCH.json[=LABEL]")
    p.add_argument("-o", "--output", default="-", help="the SVG file (default: stdout)")
    p.add_argument("--metric", choices=sorted(FIELDS), default="fault")
    p.add_argument("--title", help="default: what the metric is")
    p.add_argument("--note", action="append", default=[], help="a line under the title (repeatable)")
    p.add_argument("--only", metavar="REGEX",
                   help="draw the curves whose label matches, e.g. '\\[kvm\\]'")
    args = p.parse_args(argv)
    try:
        re.compile(args.only or "")
    except re.error as e:
        p.error(f"--only: not a regular expression: {e}")
    try:
        curves, notes = [], list(args.note)
        for spec in args.inputs:
            path, _, label = spec.partition("=")
            doc, found = load(path, label, FIELDS[args.metric])
            curves += [c for c in found if not args.only or re.search(args.only, c["label"])]
            notes.append(conditions(path, label, doc))
        if not curves:
            raise InputError(f"no curve to draw: no run in {', '.join(args.inputs)} has "
                             f"{FIELDS[args.metric]} points")
        svg = render(curves, args.title or TITLES[args.metric], notes)
    except InputError as e:
        print(f"plot_cdf.py: {e}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(svg)
    else:
        with open(args.output, "w") as f:
            f.write(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
