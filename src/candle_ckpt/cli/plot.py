"""``plot``: the best metric of every saved epoch as a PNG (needs matplotlib)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..storage.safeio import printable
from .common import (
    EXIT_OK,
    CliError,
    metric_names,
    metric_of,
    open_directory,
    rows_of,
)


def cmd_plot(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise CliError(f"cannot write {printable(output)}: no such directory "
                       f"{printable(output.parent)}")
    rows = [r for r in rows_of(layout) if metric_of(r.info) is not None]
    points = [(r.summary.epoch, metric_of(r.info)) for r in rows]
    finite = [(e, v) for e, v in points if v is not None and math.isfinite(v)]
    if not finite:
        raise CliError(f"nothing to plot: no checkpoint in {printable(layout.epochs_dir)} "
                       "records a finite metric value")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise CliError(
            "plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or, in your clone of candle-ckpt: pip install -e '.[plot]')"
        ) from None
    names = metric_names(rows)
    metric = names[0] if len(names) == 1 else "metric"
    best = layout.read_pointer("best").epoch
    last = layout.read_pointer("last").epoch
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ax.plot([e for e, _ in finite], [v for _, v in finite], "o-", color="tab:blue",
                label=f"{metric} of each saved epoch")
        best_value = dict(finite).get(best) if best is not None else None
        if best is not None and best_value is not None:
            ax.plot([best], [best_value], marker="*", markersize=18, color="tab:red",
                    linestyle="none", label=f"best (epoch {best})")
        if last is not None:
            ax.axvline(last, color="gray", linestyle="--", linewidth=1,
                       label=f"last (epoch {last})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (completed)")
        ax.set_ylabel(metric)
        ax.set_title(printable(layout.root))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    finally:
        plt.close(fig)
    print(f"wrote {printable(output)} ({len(finite)} epoch(s) of {metric}"
          + (f", best epoch {best})" if best is not None else ")"))
    return EXIT_OK
