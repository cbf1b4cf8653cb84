"""Result tables and charts with confidence intervals, one writer for every report: the
negative-strategy study (launcher/study.py), the transfer leaderboard (launcher/collect.py) and
the demo's table. The statistics themselves live in launcher/stats.py."""

import math
from collections.abc import Sequence
from pathlib import Path

from launcher.stats import MeanCI
from pretrain.atomic_write import atomic_write


def interval_text(
    ci: MeanCI | None,
    *,
    scale: float = 100.0,
    digits: int = 1,
    signed: bool = False,
    planned: int | None = None,
    absent: str = "—",
) -> str:
    """A table cell: ``mean ± half`` (``+`` shown for differences), ``(n/planned seeds)`` when
    runs are missing, ``nan`` when a run produced no value (kept visible), ``absent`` when the
    cell has no runs at all."""
    if ci is None:
        return absent
    if math.isnan(ci.mean):
        return "nan"
    text = ci.format(scale, digits, signed=signed)
    if planned is not None and ci.n < planned:
        return f"{text.removesuffix(' (n=1)')} ({ci.n}/{planned} seeds)"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


# grey first: the reference (uniform negatives, or the first checkpoint)
COLOURS = ("#8c8c8c", "#d1495b", "#edae49", "#00798c", "#30638e", "#6a4c93", "#2e933c")


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(axes, groups: Sequence[str], series: dict, scale: float = 1.0) -> float:
    """One bar per series in each group, with its interval as a whisker; ``series`` maps a
    label to one ``MeanCI`` (or None: no bar) per group. Returns the lowest whisker end."""
    width = 0.8 / max(1, len(series))
    lows = []
    for index, (label, cis) in enumerate(series.items()):
        heights = [ci.mean * scale if ci else math.nan for ci in cis]
        errors = [(ci.half_width or 0.0) * scale if ci else 0.0 for ci in cis]
        lows += [h - e for h, e in zip(heights, errors) if not math.isnan(h)]
        offset = (index - (len(series) - 1) / 2) * width
        axes.bar(
            [position + offset for position in range(len(groups))],
            heights,
            width=width * 0.95,
            yerr=errors,
            capsize=2,
            color=COLOURS[index % len(COLOURS)],
            label=label,
        )
    axes.set_xticks(range(len(groups)), groups)
    return min(lows, default=math.nan)


def save_png(figure, path: Path) -> None:
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120), binary=True)
    pyplot().close(figure)
