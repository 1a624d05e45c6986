"""The report's pictures, drawn from an :class:`~ptq4vm_fx.report.analysis.Analysis` as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas: no pyplot, no
global backend state, no display needed.
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..config import WEIGHT_METHODS
from .analysis import Analysis

PANEL_INCHES = (4.6, 3.2)
DPI = 100


def _grid(names: list[str], title: str) -> tuple[Figure, list]:
    """A figure with one panel per layer name, three to a row."""
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(
        figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows + 0.6), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[: len(names)]


def _short(layer: str, block: str) -> str:
    return layer.removeprefix(block + ".").removeprefix("mixer.")


def token_ranges(analysis: Analysis) -> Figure:
    """Per token position: min..max of the quantizer input x/m over images and channels, and the
    per-token static quantization range (PTS) where there is one."""
    data = analysis.token_ranges
    fig, axes = _grid(
        list(data), f"{analysis.detail_block}: activation range per token (quantizer input x/m)"
    )
    for ax, (layer, d) in zip(axes, data.items()):
        tokens = range(len(d["x_min"]))
        ax.fill_between(tokens, d["x_min"], d["x_max"], color="tab:blue", alpha=0.35, label="observed")
        if d["quant_min"] is not None:
            ax.step(tokens, d["quant_min"], where="mid", color="tab:red", lw=1, label="quantizer range")
            ax.step(tokens, d["quant_max"], where="mid", color="tab:red", lw=1)
        ax.set_title(_short(layer, analysis.detail_block))
        ax.set_xlabel("token position")
        ax.legend(fontsize="small")
    return fig


def channel_absmax(analysis: Analysis) -> Figure:
    """Per input channel: max |x| of the float model's input and of the smoothed quantizer input."""
    data = analysis.channel_absmax
    fig, axes = _grid(list(data), f"{analysis.detail_block}: channel outliers before and after smoothing")
    for ax, (layer, d) in zip(axes, data.items()):
        channels = range(len(d["float"]))
        marker = "o" if len(channels) <= 32 else None
        ax.plot(channels, d["float"], color="tab:orange", lw=1, marker=marker, label="float input x")
        ax.plot(channels, d["smoothed"], color="tab:blue", lw=1, marker=marker, label="smoothed x/m")
        ax.set_yscale("log")
        ax.set_title(_short(layer, analysis.detail_block))
        ax.set_xlabel("input channel")
        ax.set_ylabel("max |x|")
        ax.legend(fontsize="small")
    return fig


def histograms(analysis: Analysis) -> Figure:
    """Distribution of activation values relative to their largest magnitude, log counts."""
    data = analysis.histograms
    fig, axes = _grid(list(data), f"{analysis.detail_block}: activation histograms (long tails)")
    for ax, (layer, d) in zip(axes, data.items()):
        ax.stairs(d["float"], d["edges"], color="tab:orange", label="float input x")
        ax.stairs(d["smoothed"], d["edges"], color="tab:blue", label="smoothed x/m")
        ax.set_yscale("log")
        ax.set_title(_short(layer, analysis.detail_block))
        ax.set_xlabel("value / max |value|")
        ax.legend(fontsize="small")
    return fig


def codebook_usage(analysis: Analysis) -> Figure:
    """Per VQ layer of the detail block: sub-vectors per codeword, most used first."""
    rows = {r["layer"]: r for r in analysis.rows if "codebook_usage" in r and
            r["layer"].startswith(analysis.detail_block + ".")}
    fig, axes = _grid(list(rows), f"{analysis.detail_block}: codebook usage")
    for ax, (layer, r) in zip(axes, rows.items()):
        counts = r["codebook_usage"]
        ax.bar(range(len(counts)), counts, width=1.0, color="tab:blue")
        ax.set_title(f"{_short(layer, analysis.detail_block)}: {r['codewords_used']}/{r['k']} used, "
                     f"{r['code_entropy_bits']:.2f} of {math.log2(r['k']):g} bits", fontsize="small")
        ax.set_xlabel("codeword (by use)")
        ax.set_ylabel("sub-vectors")
    return fig


def block_cosine(analysis: Analysis) -> Figure:
    """Per block: cosine of the quantized block's output with the float one before and after JLSS
    (or VQ calibration), and the training loss (JLSS per epoch, VQ per step)."""
    names = list(analysis.blocks)
    vq = any(analysis.blocks[n].get("vq_step_losses") for n in names)
    method = analysis.summary.get("method")
    if method in ("vq_convex", "vimvq"):
        before, after = "k-means VQ (init)", f"after {method}"
    elif method in WEIGHT_METHODS:  # rtn, vq_kmeans: nothing calibrated, the two coincide
        before, after = "quantized", f"{method} (no calibration)"
    else:
        before, after = "before JLSS (init)", "after JLSS"
    fig = Figure(figsize=(11, 3.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    index = range(len(names))
    left.plot(
        index,
        [analysis.blocks[n]["cos_before"] for n in names],
        "o-",
        color="tab:orange",
        label=before,
    )
    left.plot(index, [analysis.blocks[n]["cos_after"] for n in names], "o-", color="tab:blue", label=after)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("block")
    left.set_ylabel("output cosine with float")
    left.set_title("per-block output cosine")
    left.legend(fontsize="small")
    key = "vq_step_losses" if vq else "epoch_losses"
    trained = {n: analysis.blocks[n][key] for n in names if analysis.blocks[n].get(key)}
    for n, losses in trained.items():
        right.plot(range(1, len(losses) + 1), losses, lw=1, label=n)
    right.set_title("VQ calibration loss per step" if vq else "JLSS loss per epoch")
    if trained:
        right.set_yscale("log")
        right.set_xlabel("step" if vq else "epoch")
        right.set_ylabel("block output MSE / mean square" if vq else "1 - cos (training loss)")
        if len(trained) <= 12:
            right.legend(fontsize="x-small", ncols=2)
    else:
        right.text(0.5, 0.5, "no training steps were run", ha="center", va="center", transform=right.transAxes)
    return fig


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
