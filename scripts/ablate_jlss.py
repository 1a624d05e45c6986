"""PTQ4VM's levers one at a time: block inputs, JLSS epochs, learning rates, loss, activation-range search.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ablate_jlss.py digits --variants default epochs=0 ... \
        --presets w8a8 w6a6 w4a8 w4a4 --json ablation.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/ablate_jlss.py vim-t --depth 2 --images 32 --eval-images 16 \
        --variants default official --presets w4a4 --json ablation_vimt.json
    .venv/bin/python scripts/ablate_jlss.py table ablation.json ablation_vimt.json --readme README.md

``digits``: the bundled digits Vim (``ptq4vm sweep``'s model, calibration images and test set); each
variant x preset is quantized and evaluated as ``ptq4vm quantize`` does it: top-1, logits SQNR against the
float model and the calibration seconds. ``vim-t``: ``timm.create_model("vim_tiny_patch16_224",
depth=--depth)`` with random weights (seed 0) at 224 px, ``--images`` calibration images and
``--eval-images`` others, all drawn from N(0, 1) (seed 1): logits SQNR and calibration seconds only (random
weights classify nothing). ``digits --rotate-out-proj``: the experiment :func:`rotate_out_proj` first.
Each result is appended to ``--json`` as soon as it is measured (a list of records; an interrupted run
keeps what it finished).

``diagnose``: where the static-dynamic gap lies on the bundled model: the default PTQ4VM model of each
preset, simulated (``convert(simulate=True)``), with one linear name at a time (every block's) switched to
per-token dynamic ranges, then all of them; top-1 and logits SQNR of each (no recalibration: the same
scales and smoothing otherwise), and the default model calibrated on the test images themselves (the best a
static range fit to the scored images does); prints how out_proj's input rows spread (:func:`_input_spread`).
``table`` writes the records as README tables
between ``<!-- ablation:begin NAME -->`` and ``<!-- ablation:end NAME -->`` (NAME: the model, or "MODEL
diagnose"), or prints those the README lacks.

A variant is a name from :data:`VARIANTS`: the default config with one lever changed (the lever's
QuantConfig options), ``official`` (``recipe="official"``) or ``dynamic`` (the method, for reference).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

_FLOAT = {"grid_inputs": "float", "jlss_inputs": "float"}
_OFFICIAL_LR = {"jlss_param": "linear", "jlss_lr": (5e-4, 5e-4, 1e-2)}
# name -> (what it changes, in words; the QuantConfig options, or a method name)
VARIANTS = {
    "default": ("this project's defaults", {}),
    "dynamic": ("method dynamic (per-token ranges at run time; reference)", "dynamic"),
    "official": ("recipe official (the public PTQ4VM code's settings)", {"recipe": "official"}),
    "inputs=float": ("grid search and JLSS on the float model's block inputs", _FLOAT),
    "grid_inputs=float": ("grid search on the float model's block inputs, float producers (official)",
                          {"grid_inputs": "float"}),
    "epochs=0": ("grid search only, no JLSS", {"jlss_epochs": 0}),
    "epochs=30": ("30 JLSS epochs", {"jlss_epochs": 30}),
    "epochs=50": ("50 JLSS epochs", {"jlss_epochs": 50}),
    "epochs=100": ("100 JLSS epochs", {"jlss_epochs": 100}),
    "lr=5e-4": ("JLSS learning rate 5e-4 (log parameters)", {"jlss_lr": 5e-4}),
    "lr=1e-2": ("JLSS learning rate 1e-2 (log parameters)", {"jlss_lr": 1e-2}),
    "lr=official": ("the official rates on the parameters themselves (5e-4, 5e-4, 1e-2)", _OFFICIAL_LR),
    "loss=mse": ("loss: normalized MSE", {"jlss_loss": "mse"}),
    "loss=cosine+mse": ("loss: 1 - cos + normalized MSE", {"jlss_loss": "cosine+mse"}),
    "search=midpoint": ("activation ranges shrunk toward the midpoint (official)", {"act_search": "midpoint"}),
    "search=both": ("activation ranges shrunk toward zero and toward the midpoint", {"act_search": "both"}),
    "norm=2": ("grid search error norm p = 2 (default 2.4)", {"grid_norm": 2.0}),
    "norm=4": ("grid search error norm p = 4", {"grid_norm": 4.0}),
    "seed=1": ("another JLSS batch order (seed 1): the run-to-run spread", {"seed": 1}),
}


def _variant(spec: str) -> tuple[str, dict | str]:
    """A VARIANTS name, or several joined by "+" (their options merged), or "k=v,k=v" options."""
    if spec in VARIANTS:
        return spec, VARIANTS[spec][1]
    if "+" in spec and all(part in VARIANTS for part in spec.split("+")):
        merged = {}
        for part in spec.split("+"):
            merged.update(VARIANTS[part][1])
        return spec, merged
    raise SystemExit(f"unknown variant {spec!r}; choose from {', '.join(VARIANTS)} (or join them with +)")


def _config(preset: str, options: dict | str):
    from ptq4vm_fx import QuantConfig

    if isinstance(options, str):
        return QuantConfig.preset_config(preset, options)
    return QuantConfig.preset_config(preset, "ptq4vm", **options)


def _append(path: str, record: dict) -> None:
    p = Path(path)
    records = json.loads(p.read_text()) if p.exists() else []
    p.write_text(json.dumps(records + [record], indent=1) + "\n")


def _bundled(model: str):
    """``ptq4vm sweep``'s setup for the bundled ``model`` (calibration images, test batches) and its float
    evaluation."""
    from ptq4vm_fx.cli import build_parser
    from ptq4vm_fx.cli.selection import quantize_setup
    from ptq4vm_fx.evaluate import evaluate
    from ptq4vm_fx.progress import set_quiet

    set_quiet(True)
    cli_args = build_parser().parse_args(["sweep", "--model", model])
    cli_args.model_kwargs = {}
    setup = quantize_setup(cli_args)
    return setup, evaluate(setup.model, setup.loader, device=setup.device, total=setup.eval_images)


class _Rotated(torch.nn.Module):
    """``out_proj(x @ rotation)``, the linear kept as a child named ``out_proj`` (quantized as Vim's)."""

    def __init__(self, linear: torch.nn.Linear, rotation: torch.Tensor):
        super().__init__()
        self.out_proj = linear
        self.register_buffer("rotation", rotation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x @ self.rotation)


def rotate_out_proj(model: torch.nn.Module, seed: int = 0) -> None:
    """In place: every Vim mixer's ``out_proj(y)`` becomes ``out_proj'(y R)``, ``out_proj'.weight = W R`` and R
    a random orthogonal (d_inner, d_inner) matrix (QR of a Gaussian): the same float function (to rounding),
    with the quantized input rotated. An experiment: at run time it is a (d_inner x d_inner) product per token."""
    gen = torch.Generator().manual_seed(seed)
    for module in list(model.modules()):
        if isinstance(getattr(module, "out_proj", None), torch.nn.Linear) and hasattr(module, "x_proj_b"):
            linear = module.out_proj
            rotation = torch.linalg.qr(torch.randn(linear.in_features, linear.in_features, generator=gen))[0]
            with torch.no_grad():
                linear.weight.copy_(linear.weight @ rotation)
            module.out_proj = _Rotated(linear, rotation)


def run_digits(args) -> None:
    from ptq4vm_fx.pipeline import quantize_and_evaluate

    setup, float_eval = _bundled(args.model)
    if args.rotate_out_proj:
        rotate_out_proj(setup.model)
    for spec in args.variants:
        name, options = _variant(spec)
        name += "+rotated" if args.rotate_out_proj else ""
        for preset in args.presets:
            config = _config(preset, options)
            _, r = quantize_and_evaluate(setup.model, setup.calib, setup.loader, config, float_eval)
            record = {"model": args.model, "variant": name, "preset": preset, "top1": r.quant_top1,
                      "float_top1": r.float_top1, "sqnr_db": r.sqnr_db, "seconds": r.calibration_seconds,
                      "calib_images": r.calib_images, "eval_images": r.eval_images}
            _append(args.json, record)
            print(f"{name:24s} {preset}: top-1 {r.quant_top1:.2f} SQNR {r.sqnr_db:.2f} dB "
                  f"{r.calibration_seconds:.1f} s", flush=True)


def run_vim_t(args) -> None:
    import timm

    import ptq4vm_fx
    from ptq4vm_fx.evaluate import sqnr_db
    from ptq4vm_fx.progress import set_quiet

    set_quiet(True)
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", depth=args.depth).eval()
    images = torch.randn(args.images + args.eval_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    calib, test = images[: args.images], images[args.images:]
    with torch.no_grad():
        reference = model(test)
    name_of_model = f"vim_t_depth{args.depth}"
    for spec in args.variants:
        name, options = _variant(spec)
        for preset in args.presets:
            config = _config(preset, options)
            start = time.perf_counter()
            prepared = ptq4vm_fx.prepare(model, calib[:1], config)
            with torch.no_grad():
                for batch in calib.split(64):
                    prepared(batch)
            qmodel = ptq4vm_fx.convert(prepared)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                sqnr = sqnr_db(reference, qmodel(test))
            record = {"model": name_of_model, "variant": name, "preset": preset, "top1": None, "sqnr_db": sqnr,
                      "seconds": seconds, "calib_images": args.images, "eval_images": args.eval_images}
            _append(args.json, record)
            print(f"{name:24s} {preset}: SQNR {sqnr:.2f} dB {seconds:.1f} s", flush=True)


@torch.no_grad()
def _input_spread(sim, images: torch.Tensor, preset: str, linear: str = "mixer.out_proj") -> None:
    """Prints, per block, how ``linear``'s input rows (x / m of each image's token) spread: the width of
    each row's range over its static range (10th, 50th, 90th percentile over images and tokens), and
    over how many of the channels the row's largest |value| falls (a per-channel smoothing can only tame
    an outlier that stays in one channel)."""
    from ptq4vm_fx.capture import blocks
    from ptq4vm_fx.quant.integer import act_range

    seen = {}
    hooks = [block.get_submodule(linear).register_forward_pre_hook(lambda m, a, n=name: seen.setdefault(n, a[0]))
             for name, block in blocks(sim)]
    sim(images)
    for h in hooks:
        h.remove()
    for name, block in blocks(sim):
        fq = block.get_submodule(linear)
        v = seen[name].float() * fq.inv_smooth  # (N, L, C)
        scale, zero_point = fq.static_act_qparams()
        lo, hi = act_range(fq.a_bits)
        ratio = (v.amax(-1) - v.amin(-1)) / ((hi - lo) * scale)
        top = v.abs().argmax(-1).flatten()
        share = (top == top.mode().values).float().mean()
        print(f"{preset} {name} {linear} input: row range / static range p10 {ratio.quantile(0.1):.2f} median "
              f"{ratio.median():.2f} p90 {ratio.quantile(0.9):.2f}; the row maximum in {top.unique().numel()} of "
              f"{v.shape[-1]} channels, the most frequent one {100 * share:.0f} % of rows", flush=True)


def run_diagnose(args) -> None:
    import ptq4vm_fx
    from ptq4vm_fx.capture import blocks
    from ptq4vm_fx.evaluate import evaluate, logits_sqnr_db
    from ptq4vm_fx.passes.jlss import fake_quant_nodes

    setup, float_eval = _bundled(args.model)
    test_images = torch.cat([images for images, _ in setup.loader])

    def simulated(preset: str, images: torch.Tensor) -> torch.fx.GraphModule:
        prepared = ptq4vm_fx.prepare(setup.model, images[:1], _config(preset, {}))
        with torch.no_grad():
            for batch in images.split(64):
                prepared(batch)
        return ptq4vm_fx.convert(prepared, simulate=True)

    def record(variant: str, preset: str, model: torch.fx.GraphModule) -> None:
        q = evaluate(model, setup.loader, device=setup.device, total=setup.eval_images)
        _append(args.json, {"model": args.model, "variant": variant, "preset": preset, "top1": q.top1,
                            "sqnr_db": logits_sqnr_db(float_eval, q), "seconds": None})
        print(f"{preset} {variant:24s}: top-1 {q.top1:.2f} SQNR {logits_sqnr_db(float_eval, q):.2f} dB", flush=True)

    for preset in args.presets:
        sim = simulated(preset, setup.calib)
        _input_spread(sim, test_images, preset)
        fqs = [(t, block.get_submodule(t)) for _, block in blocks(sim) for t in fake_quant_nodes(block)]
        names = list(dict.fromkeys(t for t, _ in fqs))
        for switched in [[], *([n] for n in names), names]:
            for t, fq in fqs:
                fq.dynamic = t in switched
            record(f"dynamic@{'none' if not switched else 'all' if len(switched) > 1 else switched[0]}", preset, sim)
        record("calibrated@test", preset, simulated(preset, test_images))


def _cell(records: list[dict], with_top1: bool) -> str:
    """Mean over repeated records of one variant x preset (no seconds for a diagnosis)."""
    sqnr = sum(r["sqnr_db"] for r in records) / len(records)
    top1 = f"{sum(r['top1'] for r in records) / len(records):.2f} / " if with_top1 else ""
    if records[0]["seconds"] is None:
        return f"{top1}{sqnr:.1f}"
    return f"{top1}{sqnr:.1f} / {sum(r['seconds'] for r in records) / len(records):.0f} s"


def _block(record: dict) -> str:
    """The README block of a record: its model's, or "MODEL diagnose" for a diagnosis."""
    return record["model"] + (" diagnose" if record["seconds"] is None else "")


def _words(v: str) -> str:
    """What variant ``v`` (a VARIANTS name, names joined by "+", a diagnosis, "...+rotated") changes."""
    if v.endswith("+rotated"):
        return _words(v[: -len("+rotated")]) + ", out_proj's input rotated (rotate_out_proj)"
    if v == "calibrated@test":
        return "the default PTQ4VM calibrated on the test images themselves (ranges fit to the scored images)"
    if v.startswith("dynamic@"):
        where = {"none": "no linear (the default PTQ4VM model)", "all": "every linear"}.get(v[8:], f"`{v[8:]}`")
        return f"per-token dynamic ranges at {where}, in every block"
    return VARIANTS[v][0] if v in VARIANTS else " + ".join(VARIANTS[p][0] for p in v.split("+"))


def table(records: list[dict], block: str) -> str:
    """Markdown: a row per variant (first-seen order), a column per preset."""
    rows = [r for r in records if _block(r) == block]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    with_top1 = rows[0]["top1"] is not None
    what = ("top-1 % / " if with_top1 else "") + "logits SQNR dB" + (" / calibration s" if rows[0]["seconds"] else "")
    lines = [f"| variant ({what}) | what it changes | " + " | ".join(p.upper() for p in presets) + " |",
             "| --- | --- | " + " | ".join("---" for _ in presets) + " |"]
    for v in variants:
        words = _words(v)
        cells = []
        for p in presets:
            got = [r for r in rows if r["variant"] == v and r["preset"] == p]
            cells.append(_cell(got, with_top1) if got else "-")
        lines.append(f"| `{v}` | {words} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(args) -> None:
    records = [r for path in args.json for r in json.loads(Path(path).read_text())]
    readme = Path(args.readme)
    text = readme.read_text()
    for name in dict.fromkeys(map(_block, records)):
        begin, end = f"<!-- ablation:begin {name} -->", f"<!-- ablation:end {name} -->"
        if begin not in text:
            print(table(records, name) + "\n")
            continue
        block = f"{begin}\n{table(records, name)}\n{end}"
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _, block=block: block, text, flags=re.S)
    readme.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--model", default="vim_digits")
    d.add_argument("--rotate-out-proj", action="store_true", help="the experiment rotate_out_proj (Vim)")
    v = sub.add_parser("vim-t")
    v.add_argument("--depth", type=int, default=2)
    v.add_argument("--images", type=int, default=32)
    v.add_argument("--eval-images", type=int, default=16)
    for p in (d, v):
        p.add_argument("--variants", nargs="+", default=["default"])
        p.add_argument("--presets", nargs="+", default=["w8a8", "w6a6", "w4a8", "w4a4"])
        p.add_argument("--json", required=True)
    g = sub.add_parser("diagnose")
    g.add_argument("--model", default="vim_digits")
    g.add_argument("--presets", nargs="+", default=["w4a4"])
    g.add_argument("--json", required=True)
    t = sub.add_parser("table")
    t.add_argument("json", nargs="+")
    t.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    args = parser.parse_args(argv)
    {"digits": run_digits, "vim-t": run_vim_t, "diagnose": run_diagnose, "table": write_tables}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
