"""The report's text: the per-layer table (Markdown, via tabulate) and a self-contained HTML page
with the table and the plots embedded as base64 PNGs."""

from __future__ import annotations

import base64
import html

from tabulate import tabulate

from .analysis import Analysis

ALIGN = ("left", "left", "left", "right", "right", "right", "right", "right", "right")
HEADERS = ["layer", "bits", "act range (x/m)", "clipped %", "weight SQNR dB", "act SQNR dB", "output cos",
           "bits/weight stored", "codewords used (entropy)"]
CAPTIONS = {
    "token_ranges": "Per-token activation ranges of the quantizer input across token positions: the range "
    "varies from token to token, which per-token static (PTS) scales follow.",
    "channel_absmax": "Per-channel max |x| of the float model's input and of the smoothed quantizer input "
    "x/m: smoothing tames the outlier channels.",
    "histograms": "Activation histograms relative to the largest magnitude (log counts): most values sit "
    "near zero and a long tail sets the range.",
    "block_cosine": "Per-block output cosine of the quantized block with the float block (calibration "
    "data), before and after JLSS (VQ: the k-means start and the calibrated codes), and the training loss.",
    "codebook_usage": "Codebook usage of each vector-quantized layer: how many sub-vectors use each "
    "codeword, most used first. A flat histogram spends the code bits well; unused codewords waste them.",
}


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(analysis: Analysis) -> list[list[str]]:
    return [
        [
            r["layer"],
            r["bits"],
            f"[{r['act_min']:.3g}, {r['act_max']:.3g}]",
            _number(r["clipped_pct"], ".3f"),
            f"{r['weight_sqnr_db']:.1f}",
            _number(r["act_sqnr_db"], ".1f"),
            f"{r['output_cosine']:.6f}",
            _number(r.get("stored_bits"), ".3f"),
            f"{r['codewords_used']}/{r['k']} ({r['code_entropy_bits']:.2f} b)" if "k" in r else "-",
        ]
        for r in analysis.rows
    ]


def summary_lines(analysis: Analysis) -> list[str]:
    s = analysis.summary
    return [
        f"model {s['model']}, {s['config']} ({s['stage']}), {s['quantized_linears']} quantized linears",
        (
            f"on {s['images']} images: float top-1 {s['float_top1']:.2f}%, quantized top-1 "
            f"{s['quant_top1']:.2f}%, logits SQNR {s['logits_sqnr_db']:.1f} dB"
        ),
        *([f"VQ weights: {s['vq_nominal_bits']:.3g} bits per weight nominal, {s['vq_stored_bits']:.3f} stored "
             "(codebooks included)"] if "vq_nominal_bits" in s else []),
        f"plots: {analysis.detail_block}",
    ]


def markdown(analysis: Analysis) -> str:
    """The summary and the per-layer table as a Markdown document."""
    body = tabulate(
        table_rows(analysis), headers=HEADERS, tablefmt="github", disable_numparse=True, colalign=ALIGN
    )
    lines = "\n".join(f"- {line}" for line in summary_lines(analysis))
    return f"# PTQ4VM report\n\n{lines}\n\n{body}\n"


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def page(analysis: Analysis, pngs: dict[str, bytes]) -> str:
    """A self-contained HTML page: summary, the plots named in ``pngs`` (file stem -> PNG bytes), table."""
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{_base64(data)}">'
        f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>"
        for name, data in pngs.items()
    )
    if "block_cosine" not in pngs:
        figures += "\n<p>No per-block JLSS statistics: this method runs neither grid search nor JLSS.</p>"
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(analysis))
    table = tabulate(
        table_rows(analysis), headers=HEADERS, tablefmt="html", disable_numparse=True, colalign=ALIGN
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>PTQ4VM report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
td:first-child {{ text-align: left; font-family: monospace; }}
</style></head>
<body>
<h1>PTQ4VM report</h1>
<ul>{summary}</ul>
<h2>Plots</h2>
{figures}
<h2>Quantized linears</h2>
<p>Weight SQNR: smoothed float weight vs dequantized weight. Activation SQNR: quantizer input x/m vs its
quantized value. Output cos: the quantized layer vs the float layer on the same input, per token.</p>
{table}
</body></html>
"""
