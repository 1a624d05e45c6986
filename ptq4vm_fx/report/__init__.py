"""``ptq4vm report``: what quantization did to a model, as files in one folder.

index.html           self-contained page: summary, plots, per-layer table
layers.md            the per-layer table (Markdown)
report.json          every number and every plotted series
token_ranges.png     per-token activation ranges (token-wise variance, PTS)
channel_absmax.png   per-channel max |x| before and after smoothing (channel outliers)
histograms.png       activation histograms, log counts (long tails)
block_cosine.png     per-block output cosine before/after JLSS or VQ calibration (only with block statistics)
codebook_usage.png   sub-vectors per codeword of the detail block's VQ layers (only with VQ layers)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from . import plots
from .analysis import Analysis, analyse
from .page import markdown, page, summary_lines


def write_report(
    qmodel: torch.fx.GraphModule,
    float_model: nn.Module,
    images: Tensor,
    labels: Tensor,
    output: str | os.PathLike,
    block: int | None = None,
    batch_size: int = 64,
) -> tuple[Analysis, dict[str, Path]]:
    """Analyse ``qmodel`` against ``float_model`` on images (N, C, H, W) with labels (N,) and write
    the report into ``output`` (created if missing); returns the analysis and {file stem: path}."""
    analysis = analyse(qmodel, float_model, images, labels, block=block, batch_size=batch_size)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "token_ranges": plots.token_ranges(analysis),
        "channel_absmax": plots.channel_absmax(analysis),
        "histograms": plots.histograms(analysis),
    }
    if analysis.blocks:
        figures["block_cosine"] = plots.block_cosine(analysis)
    if any("codebook_usage" in r and r["layer"].startswith(analysis.detail_block + ".") for r in analysis.rows):
        figures["codebook_usage"] = plots.codebook_usage(analysis)
    pngs = {name: plots.png(fig) for name, fig in figures.items()}
    written = {}
    for name, data in pngs.items():
        written[name] = out / f"{name}.png"
        written[name].write_bytes(data)
    written["layers"] = out / "layers.md"
    written["layers"].write_text(markdown(analysis))
    written["report"] = out / "report.json"
    written["report"].write_text(json.dumps(analysis.to_dict(), indent=1) + "\n")
    written["index"] = out / "index.html"
    written["index"].write_text(page(analysis, pngs))
    return analysis, written


__all__ = ["Analysis", "analyse", "summary_lines", "write_report"]
