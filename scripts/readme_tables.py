"""Rewrite the README's sweep results from the JSON ``ptq4vm sweep --json`` writes; never edit them by hand.

    OMP_NUM_THREADS=1 .venv/bin/ptq4vm sweep --json sweep.json
    .venv/bin/python scripts/readme_tables.py sweep.json --machine "2 CPU cores"

One block per model: the default model's (vim_digits) lies between the README's ``<!-- sweep:begin -->``
and ``<!-- sweep:end -->`` lines, another model's between ``<!-- sweep:begin NAME -->`` and
``<!-- sweep:end NAME -->``. The block of the model the sweep JSON holds is replaced: a sentence saying
what was measured, how and where, the top-1 / SQNR table (presets x methods) and the
calibration-plus-conversion seconds of each cell. A sweep of the weight methods (rtn, vq_kmeans,
vq_convex, vimvq) has its own block, ``<!-- sweep:begin NAME weights -->`` (NAME the model, also the
default one), and its tables have a row per method under the float model's, a column per preset, and
the peak memory of each calibration beside its seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"
DEFAULT_MODEL = "vim_digits"  # the model whose block has the bare markers
SHARED = ("model", "data", "float_top1", "calib_images", "eval_images")  # the same in every row of one sweep
README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = "ptq4vm sweep --json sweep.json"
WIDTH = 100  # the README's line length


def _ordered(rows: list[dict], key: str) -> list[str]:
    return list(dict.fromkeys(row[key] for row in rows))


WEIGHT_METHODS = ("rtn", "vq_kmeans", "vq_convex", "vimvq")


def _weight_sweep(rows: list[dict]) -> bool:
    """Whether the sweep is of the weight methods (each row's method one of them)."""
    weights = {row["method"] in WEIGHT_METHODS for row in rows}
    if len(weights) != 1:
        raise ValueError("a sweep JSON holds either the weight methods or the others, not both")
    return weights.pop()


def _method_table(rows: list[dict], cell, float_cell: str | None) -> list[str]:
    """Markdown rows: one per method (in sweep order) under a float row (``float_cell`` in each column,
    left out when None), one column per preset, ``cell(row)`` in each."""
    methods, presets = _ordered(rows, "method"), _ordered(rows, "preset")
    by_cell = {(row["preset"], row["method"]): row for row in rows}
    lines = ["| method | " + " | ".join(p.upper() for p in presets) + " |", "| --- |" + " --- |" * len(presets)]
    if float_cell is not None:
        lines.append("| float | " + " | ".join(float_cell for _ in presets) + " |")
    for method in methods:
        cells = [cell(by_cell[p, method]) if (p, method) in by_cell else "-" for p in presets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _table(rows: list[dict], cell) -> list[str]:
    """Markdown rows: one per preset (in sweep order), one column per method, ``cell(row)`` in each."""
    methods, presets = _ordered(rows, "method"), _ordered(rows, "preset")
    by_cell = {(row["preset"], row["method"]): row for row in rows}
    lines = ["| bits | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for preset in presets:
        cells = [cell(by_cell[preset, m]) if (preset, m) in by_cell else "-" for m in methods]
        lines.append(f"| {preset.upper()} | " + " | ".join(cells) + " |")
    return lines


def render(rows: list[dict], machine: str, command: str = COMMAND) -> str:
    """The generated README text (without the markers) for the rows of one sweep JSON."""
    if not rows:
        raise ValueError("the sweep JSON holds no results")
    for key in SHARED:
        values = {row[key] for row in rows}
        if len(values) != 1:
            raise ValueError(f"the rows of the sweep JSON disagree on {key}: {sorted(values)}")
    first = rows[0]
    intro = (
        f"Top-1 (%) / logits SQNR against the float model (dB) of `{first['model']}` on the "
        f"{first['eval_images']} test images of the {first['data']} (float top-1 {first['float_top1']:.2f} %; "
        f"one image is {100.0 / first['eval_images']:.2f} points), calibrated on {first['calib_images']} "
        f"calibration images. Measured with `{command}` on {machine}; the tables are written from its JSON "
        f"by `scripts/readme_tables.py`."
    )
    if _weight_sweep(rows):
        return "\n".join([
            textwrap.fill(intro, width=WIDTH, break_on_hyphens=False, break_long_words=False),
            "",
            *_method_table(rows, lambda r: f"{r['quant_top1']:.2f} / {r['sqnr_db']:.1f}",
                           f"{first['float_top1']:.2f} / -"),
            "",
            "Calibration plus conversion (s) and the process's peak resident memory during it (MiB), the "
            "`calibration_seconds` and `peak_rss_mib` of the same run:",
            "",
            *_method_table(rows, lambda r: f"{r['calibration_seconds']:.1f} s, {r['peak_rss_mib']:.0f} MiB", None),
        ])
    return "\n".join([
        textwrap.fill(intro, width=WIDTH, break_on_hyphens=False, break_long_words=False),
        "",
        *_table(rows, lambda r: f"{r['quant_top1']:.2f} / {r['sqnr_db']:.1f}"),
        "",
        "Calibration plus conversion (s), the `calibration_seconds` of the same run:",
        "",
        *_table(rows, lambda r: f"{r['calibration_seconds']:.1f}"),
    ])


def markers(model: str, weights: bool = False) -> tuple[str, str]:
    """The (begin, end) marker lines of ``model``'s block (``weights``: of its weight-method sweep)."""
    if model == DEFAULT_MODEL and not weights:
        return BEGIN, END
    name = f"{model} weights" if weights else model
    return BEGIN.replace(" -->", f" {name} -->"), END.replace(" -->", f" {name} -->")


def replace_block(text: str, block: str, model: str = DEFAULT_MODEL, weights: bool = False) -> str:
    """``text`` with what lies between the begin and end marker lines of ``model``'s block (its weight
    sweep's with ``weights``) replaced by ``block``."""
    begin, end = markers(model, weights)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one {begin} line followed by one {end} line")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_json", help="the file `ptq4vm sweep --json` wrote")
    parser.add_argument("--machine", required=True, help='where the sweep ran, e.g. "2 CPU cores"')
    parser.add_argument("--command", default=COMMAND, help=f"the command that ran it (default: {COMMAND})")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    rows = json.loads(Path(args.sweep_json).read_text())
    block = render(rows, args.machine, args.command)  # checks that every row is of one model
    weights = _weight_sweep(rows)
    args.readme.write_text(replace_block(args.readme.read_text(), block, rows[0]["model"], weights))
    print(f"wrote the {rows[0]['model']}{' weight-method' if weights else ''} sweep tables of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
