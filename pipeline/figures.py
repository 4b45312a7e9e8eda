"""The study's figures, drawn only from the runs' metrics files; called by pipeline/report.py.

Per dataset x architecture x optimizer (a report ``Group``), as PNG and SVG:
- ``<group>_accuracy_vs_remaining``: test accuracy against remaining parameters (% of all weights and biases, log
  axis), one line per pruner (the mean over seeds) with its 95 % Student-t interval as the band (none for one seed),
  the dense model as a reference line;
- ``<group>_nnrelief_connections``: NNrelief's remaining connections per layer (% of the layer's), per iteration,
  with 95 % intervals over seeds as error bars;
- ``<group>_nnrelief_architecture``: NNrelief's live neurons (Linear) or channels (Conv2d) per layer, per iteration;
- ``<group>_nnrelief_retraining``: NNrelief's test accuracy before and after retraining, per iteration, with 95 %
  intervals over seeds as bands;
- ``<group>_accuracy_at_targets`` (target mode): every pruner's accuracy at every target, on one compression axis,
  with 95 % intervals over seeds as bands;
- ``<dataset>_<architecture>_<optimizer>_sweep`` (a sweep of NNrelief's settings): each pruner's accuracy at each
  sweep point's comparison count, with 95 % intervals over seeds as error bars.

Intervals come from pipeline/stats.py, as in the tables. A group whose dense model did not train says so in its titles.

Colours are fixed per pruner (``PRUNER_COLOURS``) across every figure. Files are deterministic: the Agg backend,
a fixed SVG hash salt and no dates in the metadata, so a rerun on the same runs writes the same bytes.
"""

from __future__ import annotations

import math
import statistics
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pipeline import stats

PRUNER_COLOURS = {  # one fixed colour per pruner, in every figure
    "nnrelief": "#d62728",  # red
    "magnitude": "#1f77b4",  # blue
    "snip": "#2ca02c",  # green
    "grasp": "#9467bd",  # purple
    "synflow": "#ff7f0e",  # orange
    "random": "#7f7f7f",  # grey
}
_SPARE_COLOURS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939")
DENSE_COLOUR = "#000000"
STYLE = {
    "svg.hashsalt": "relief-report", "svg.fonttype": "path", "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.dpi": 100,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
}
PNG_DPI = 150
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
FIGURES = ("accuracy_vs_remaining", "nnrelief_connections", "nnrelief_architecture", "nnrelief_retraining")


def pruner_colour(pruner: str) -> str:
    """The pruner's colour: fixed for the known ones, else one chosen by a stable hash of its name."""
    return PRUNER_COLOURS.get(pruner, _SPARE_COLOURS[zlib.crc32(pruner.encode()) % len(_SPARE_COLOURS)])


def _shades(colour: str, count: int) -> list[tuple[float, float, float]]:
    """``count`` shades of ``colour``, light to full: one per iteration."""
    red, green, blue = to_rgb(colour)
    weights = [0.3 + 0.7 * (i + 1) / count for i in range(count)]
    return [(1 - w + w * red, 1 - w + w * green, 1 - w + w * blue) for w in weights]


def _percent(value: float, _position=None) -> str:
    """A percentage to 3 significant digits: 80 %, 14.1 %, 1.63 %, 0.0412 %."""
    return f"{float(f'{value:.3g}'):g} %"


def _thinned(values: list[float], min_decades: float) -> list[float]:
    """Tick positions from ``values`` (descending), dropping each closer than ``min_decades`` to the last kept."""
    kept: list[float] = []
    for value in sorted(set(values), reverse=True):
        if value > 0 and (not kept or math.log10(kept[-1] / value) >= min_decades):
            kept.append(value)
    return kept


def _save(figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in ("png", "svg"):
        target = path.parent / f"{path.name}.{suffix}"  # not with_suffix: a sweep point's name has dots
        with plt.rc_context(STYLE):  # the SVG hash salt must be set when saving, not only when drawing
            figure.savefig(target, format=suffix, dpi=PNG_DPI, metadata=METADATA[suffix])
        written.append(target)
    plt.close(figure)
    return written


def _title(figure, group, what: str) -> None:
    warning = "  DENSE MODEL DID NOT TRAIN" if group.untrained else ""
    figure.suptitle(f"{what}\n{group.title}  ({group.key[0]}){warning}")


def _band(values: list[list[float]]) -> tuple[list[float], list[float]] | None:
    """The 95 % Student-t interval of the mean at each point (``values``: per point, per seed); None for one seed."""
    summaries = [stats.summarise(v) for v in values]
    if any(s.ci_low is None for s in summaries):
        return None
    return [s.ci_low for s in summaries], [s.ci_high for s in summaries]


def _band_title(runs_by_pruner) -> str:
    seeds = {len(runs) for runs in runs_by_pruner if runs}
    return ("band: 95 % interval of the mean\nover seeds (none for one seed)" if max(seeds, default=1) > 1
            else "1 seed: no interval")


def _per_iteration(runs: list[dict], value) -> list[list[float]]:
    """``value(record)`` per iteration (outer) and seed (inner), over the iterations every seed has."""
    count = min(len(r["metrics"]["iterations"]) for r in runs)
    return [[value(r["metrics"]["iterations"][i]) for r in runs] for i in range(count)]


def _dense_line(axes, runs: list[dict]) -> None:
    """The dense models' mean test accuracy as a dashed reference line."""
    dense = statistics.mean(r["metrics"]["dense"]["test_accuracy_pct"] for r in runs)
    axes.axhline(dense, color=DENSE_COLOUR, linestyle="--", linewidth=1.2, label=f"dense ({dense:.2f} %)")


def _accuracy_lines(axes, group, x_of, suffix=lambda pruner: "") -> dict[str, tuple[list[float], list[float]]]:
    """The dense line, then per pruner with runs its mean test accuracy over seeds per iteration (at ``x_of(runs)``,
    one x per iteration) with its 95 % band; the line's label is the pruner and ``suffix(pruner)``. Returns each
    line's x and mean accuracy, by pruner."""
    _dense_line(axes, [r for runs in group.by_pruner.values() for r in runs])
    lines = {}
    for pruner in group.pruners:
        runs = group.by_pruner.get(pruner)
        if not runs:
            continue
        accuracy = _per_iteration(runs, lambda r: r["test_accuracy_pct"])
        x, mean = x_of(runs)[:len(accuracy)], [statistics.mean(a) for a in accuracy]
        colour, main = pruner_colour(pruner), pruner == "nnrelief"
        axes.plot(x, mean, color=colour, marker="o", markersize=6 if main else 4.5, linewidth=2.4 if main else 1.5,
                  zorder=3 if main else 2, label=pruner + suffix(pruner))
        band = _band(accuracy)
        if band:
            axes.fill_between(x, *band, color=colour, alpha=0.18, linewidth=0)
        lines[pruner] = x, mean
    return lines


def _remaining(runs: list[dict]) -> list[float]:
    """The mean over seeds of remaining parameters (% of all weights and biases), per iteration."""
    return [statistics.mean(v) for v in _per_iteration(runs, lambda r: r["parameters"]["remaining_pct_of_all"])]


def accuracy_vs_remaining(group) -> plt.Figure:
    collapsed = {pruner: [any(v) for v in _per_iteration(runs, lambda r: bool(r.get("collapsed")))]
                 for pruner, runs in group.by_pruner.items() if runs}
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        lines = _accuracy_lines(axes, group, _remaining,
                                lambda pruner: " (collapsed: ×)" if any(collapsed[pruner]) else "")
        for pruner, (remaining, accuracy) in lines.items():
            bad = [(x, a) for x, a, c in zip(remaining, accuracy, collapsed[pruner]) if c]
            if bad:
                axes.scatter(*zip(*bad), marker="x", s=60, color=pruner_colour(pruner), zorder=4)
        nnrelief = group.by_pruner["nnrelief"]
        at = statistics.mean(r["metrics"]["iterations"][group.iteration - 1]["parameters"]["remaining_pct_of_all"]
                             for r in nnrelief)
        axes.axvline(at, color=pruner_colour("nnrelief"), linestyle=":", linewidth=1,
                     label=f"comparison (NNrelief iteration {group.iteration})")
        axes.set_xscale("log")
        # ticks at NNrelief's iterations (every pruner is read at the same counts), thinned so labels never touch
        ticks = _remaining(nnrelief)
        low, high = min(ticks), max(ticks)
        axes.set_xticks(_thinned(ticks, max(math.log10(high / low) if low > 0 else 0, 0.3) / 7))
        axes.xaxis.set_major_formatter(FuncFormatter(_percent))
        axes.xaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.invert_xaxis()  # pruning goes left to right: fewer parameters further right
        axes.set_xlabel("remaining parameters (% of all weights and biases, log scale)")
        axes.set_ylabel("test accuracy after retraining (%)")
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                    title=_band_title(group.by_pruner.values()), title_fontsize=8)
        _title(figure, group, "Accuracy against remaining parameters")
        return figure


def _layers(runs: list[dict]) -> list[dict]:
    return runs[0]["metrics"]["dense"]["layers"]


def _layer_label(layer: dict) -> str:
    return f"{layer['layer']}\n({layer['kind']})"


def nnrelief_connections(group) -> plt.Figure:
    runs = group.by_pruner["nnrelief"]
    layers = _layers(runs)
    per_iteration = _per_iteration(runs, lambda record: [
        100 * layer["connections_remaining"] / layer["connections_total"] for layer in record["layers"]])
    count = len(per_iteration)
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(max(6.5, 1.6 * len(layers) + 2.5), 4.6), layout="constrained")
        width = 0.8 / count
        for i, (seeds, shade) in enumerate(zip(per_iteration, _shades(pruner_colour("nnrelief"), count))):
            means = [statistics.mean(s[j] for s in seeds) for j in range(len(layers))]
            band = _band([[s[j] for s in seeds] for j in range(len(layers))])
            errors = None if band is None else [[min(m - low, 0.99 * m) for m, low in zip(means, band[0])],
                                                [high - m for m, high in zip(means, band[1])]]  # log axis: > 0
            positions = [j - 0.4 + width * (i + 0.5) for j in range(len(layers))]
            bars = axes.bar(positions, means, width=width * 0.92, color=shade, edgecolor="#555555", linewidth=0.5,
                            label=f"iteration {i + 1}", yerr=errors, error_kw={"linewidth": 0.8, "capsize": 2})
            texts = axes.bar_label(bars, labels=[_percent(m) for m in means], fontsize=7, padding=2, rotation=90)
            for text in texts:
                text.set_zorder(5)
        axes.set_yscale("log")
        smallest = min((v for seeds in per_iteration for s in seeds for v in s if v > 0), default=1.0)
        axes.set_ylim(10 ** math.floor(math.log10(smallest)), 300)  # a whole decade below; room for labels on top
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _percent(v) if v <= 100 else ""))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xticks(range(len(layers)), [_layer_label(layer) for layer in layers])
        axes.set_xlabel("layer (dense = 100 %; connections: weights of a Linear layer, kernels of a Conv2d layer; "
                        "bars: 95 % interval over seeds)")
        axes.set_ylabel("remaining connections (% of the layer's, log scale)")
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        _title(figure, group, "NNrelief: remaining connections per layer")
        return figure


def nnrelief_architecture(group) -> plt.Figure:
    runs = group.by_pruner["nnrelief"]
    dense = runs[0]["metrics"]["dense"]
    layers = dense["layers"]
    rows = [[float(v) for v in dense["architecture"]]] + [
        [statistics.mean(s[j] for s in seeds) for j in range(len(dense["architecture"]))]
        for seeds in _per_iteration(runs, lambda record: record["architecture"])]
    columns = [f"input\n({'channels' if layers[0]['kind'] == 'conv' else 'features'})"] + [
        f"{layer['layer']}\n({'channels' if layer['kind'] == 'conv' else 'neurons'})" for layer in layers]
    share = [[100 * v / d if d else 0.0 for v, d in zip(row, rows[0])] for row in rows]
    with plt.rc_context({**STYLE, "axes.grid": False}):
        figure, axes = plt.subplots(figsize=(max(6.5, 1.5 * len(columns) + 2.5), 1.0 + 0.55 * len(rows) + 1.2),
                                    layout="constrained")
        image = axes.imshow(share, cmap="Reds", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                text = f"{value:.0f}" if value == round(value) else f"{value:.1f}"
                axes.text(j, i, text, ha="center", va="center", fontsize=9,
                          color="white" if share[i][j] > 60 else "black")
        axes.set_xticks(range(len(columns)), columns)
        axes.set_yticks(range(len(rows)), ["dense"] + [f"iteration {i}" for i in range(1, len(rows))])
        axes.tick_params(length=0)
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_xlabel("layer (cell: live units, mean over seeds)")
        figure.colorbar(image, ax=axes, label="live units (% of dense)", shrink=0.9)
        _title(figure, group, "NNrelief: architecture per iteration (live neurons or channels)")
        return figure


def nnrelief_retraining(group) -> plt.Figure:
    runs = group.by_pruner["nnrelief"]
    colour = pruner_colour("nnrelief")
    before = _per_iteration(runs, lambda r: r["test_accuracy_before_retrain_pct"])
    after = _per_iteration(runs, lambda r: r["test_accuracy_pct"])
    remaining = _remaining(runs)
    iterations = list(range(1, len(after) + 1))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(6.5, 4.4), layout="constrained")
        _dense_line(axes, runs)
        for values, label, style, face in ((before, "before retraining", "--", "white"),
                                           (after, "after retraining", "-", colour)):
            axes.plot(iterations, [statistics.mean(v) for v in values], linestyle=style, color=colour, marker="o",
                      markerfacecolor=face, markersize=6, linewidth=2, label=label)
            band = _band(values)
            if band:
                axes.fill_between(iterations, *band, color=colour, alpha=0.15, linewidth=0)
        axes.set_xticks(iterations, [f"{i}\n({_percent(round(r, 2))} left)" for i, r in zip(iterations, remaining)])
        axes.set_xlabel("NNrelief iteration (remaining parameters, % of all weights and biases)")
        axes.set_ylabel("test accuracy (%)")
        axes.legend(loc="best", frameon=False, title=_band_title([runs]), title_fontsize=8)
        _title(figure, group, "NNrelief: accuracy before and after retraining")
        return figure


def accuracy_at_targets(group) -> plt.Figure:
    """Target mode: every pruner's accuracy at every target, on one axis of compression."""
    from pipeline.report import target_columns

    columns = target_columns(group)
    ratios = [c["compression"] for c in columns]
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        _accuracy_lines(axes, group, lambda runs: ratios)
        axes.set_xscale("log", base=2)
        axes.set_xticks(ratios, [f"{r:.3g}×" for r in ratios])
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("compression of the prunable weights and biases (dense / kept, log scale): the targets")
        axes.set_ylabel("test accuracy after retraining (%)")
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                    title=_band_title(group.by_pruner.values()), title_fontsize=8)
        _title(figure, group, "Every pruner at the same targets")
        return figure


def across_sweep(title: str, pruners: list[str], rows: list[dict]) -> plt.Figure:
    """A sweep of NNrelief's settings: each pruner's accuracy at each point's comparison count, one line per pruner
    (``rows``: pipeline.report.sweep_rows)."""
    rows = [row for row in rows if row["remaining_pct_of_all"] is not None]
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        for pruner in pruners:
            points = [row for row in rows if row[f"{pruner}_accuracy_pct"] is not None]
            if not points:
                continue
            main = pruner == "nnrelief"
            x, y = [row["remaining_pct_of_all"] for row in points], [row[f"{pruner}_accuracy_pct"] for row in points]
            axes.plot(x, y, color=pruner_colour(pruner), marker="o", markersize=6 if main else 4.5,
                      linewidth=2.4 if main else 1.5, zorder=3 if main else 2, label=pruner)
            bars = [(row["remaining_pct_of_all"], row[f"{pruner}_accuracy_pct"], row[f"{pruner}_accuracy_ci95_low_pct"],
                     row[f"{pruner}_accuracy_ci95_high_pct"]) for row in points
                    if row[f"{pruner}_accuracy_ci95_low_pct"] is not None]
            if bars:  # the 95 % interval over seeds at each point
                at, mean, low, high = zip(*bars)
                errors = [[m - lo for m, lo in zip(mean, low)], [h - m for m, h in zip(mean, high)]]
                axes.errorbar(at, mean, yerr=errors, fmt="none", ecolor=pruner_colour(pruner), elinewidth=1,
                              capsize=3, zorder=2)
        for row in rows:
            if row["nnrelief_accuracy_pct"] is not None:
                axes.annotate(row["sweep"], (row["remaining_pct_of_all"], row["nnrelief_accuracy_pct"]), fontsize=7,
                              textcoords="offset points", xytext=(4, 6), color=pruner_colour("nnrelief"))
        axes.set_xscale("log")
        ticks = [row["remaining_pct_of_all"] for row in rows]  # the sweep's points, thinned so labels never touch
        axes.set_xticks(_thinned(ticks, max(math.log10(max(ticks) / min(ticks)), 0.3) / 7) if ticks else [])
        axes.xaxis.set_major_formatter(FuncFormatter(_percent))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.invert_xaxis()
        axes.set_xlabel("remaining parameters at NNrelief's comparison iteration (% of all weights and biases, log)")
        axes.set_ylabel("test accuracy after retraining (%, mean over seeds)")
        seeds = max((row[f"{p}_seeds"] for row in rows for p in pruners), default=1)
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, title_fontsize=8,
                    title="bars: 95 % interval of the mean\nover seeds" if seeds > 1 else "1 seed: no interval")
        figure.suptitle(f"Across the sweep of NNrelief's settings\n{title}")
        return figure


DRAWERS = dict(zip(FIGURES, (accuracy_vs_remaining, nnrelief_connections, nnrelief_architecture, nnrelief_retraining)))


def write_figures(groups, out: Path, sweeps: dict | None = None) -> list[Path]:
    """Every figure of every group with a finished NNrelief run under ``out``, as PNG and SVG, and in target mode
    ``<group>_accuracy_at_targets``; for each sweep (``sweeps``: its groups and its rows (pipeline.report.sweep_rows)
    by file stem), ``<stem>``. Returns the files."""
    written = []
    for group in groups:
        if group.iteration is None:
            continue
        for name, draw in DRAWERS.items():
            written += _save(draw(group), out / f"{group.name}_{name}")
        if group.targets:
            written += _save(accuracy_at_targets(group), out / f"{group.name}_accuracy_at_targets")
    for stem, (swept, rows) in (sweeps or {}).items():
        if any(group.iteration is not None for group in swept):
            written += _save(across_sweep(" / ".join(swept[0].key[1:]), swept[0].pruners, rows), out / stem)
    return written
