"""QuantConfig: what to quantize and how. Frozen, self-validating, round-trips to a dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import InputError
from .models.family import selects
from .quant.vq import PRESETS as VQ_PRESETS
from .quant.vq import VQConfig

# Activation granularity and calibration of each method (see README "Methods").
METHODS = {
    # method: (activation granularity, smoothing, grid-search init, JLSS)
    "minmax": ("per_tensor", False, False, False),
    "dynamic": ("per_token_dynamic", False, False, False),
    "smoothquant": ("per_tensor", True, False, False),
    "pts": ("per_token", False, False, False),
    "pts_smooth": ("per_token", True, False, False),
    "ptq4vm": ("per_token", True, True, True),
    # weight-only unless the preset quantizes activations too (VQ methods, "w2a8": per-token static
    # like pts_smooth); docs/design.md section 13
    "rtn": (None, False, False, False),
    "vq_kmeans": ("per_token", True, False, False),
    "vq_convex": ("per_token", True, False, False),
    "vimvq": ("per_token", True, False, False),
}
PTQ_METHODS = ("minmax", "dynamic", "smoothquant", "pts", "pts_smooth", "ptq4vm")
VQ_METHODS = ("vq_kmeans", "vq_convex", "vimvq")
WEIGHT_METHODS = ("rtn", *VQ_METHODS)  # the methods that quantize weights below 4 bits
PRESETS = {
    "w8a8": (8, 8),
    "w6a6": (6, 6),
    "w4a8": (4, 8),
    "w4a4": (4, 4),
    "w3a16": (3, 16),
    "w2a16": (2, 16),
    "w1a16": (1, 16),
    "w2a8": (2, 8),
}
FLOAT_ACT_BITS = 16  # act_bits of a weight-only config: activations stay floating point
# The methods each preset is for.
PRESET_METHODS = {
    **{p: PTQ_METHODS for p in ("w8a8", "w6a6", "w4a8", "w4a4")},
    **{p: WEIGHT_METHODS for p in ("w3a16", "w2a16", "w1a16")},
    "w2a8": VQ_METHODS,
}
# The VQConfig fields each VQ method reads besides k and d (the others must keep their defaults).
VQ_OPTIONS = {
    "vq_kmeans": ("kmeans_iters", "seed"),
    "vq_convex": ("kmeans_iters", "seed", "n_candidates", "steps", "codebook_steps", "lr", "codebook_lr",
                  "hull_every", "batch_size", "loss", "incremental"),
    "vimvq": ("kmeans_iters", "seed", "n_candidates", "steps", "codebook_steps", "lr", "codebook_lr",
              "hull_every", "batch_size", "loss", "confirm_every", "confirm_threshold"),
}
# The options each stage of a method reads: an option of a stage the method does not run does nothing.
STAGE_OPTIONS = {
    "smooth": ("alpha",),
    "grid_search": ("grid_candidates", "grid_norm", "grid_samples", "grid_inputs", "act_search"),
    "jlss": ("jlss_epochs", "jlss_batch_size", "jlss_lr", "jlss_weight_decay", "jlss_grad_clip", "jlss_param",
             "jlss_loss", "jlss_shuffle", "jlss_inputs", "seed", "recipe"),
}
# The choices of the string options (docs/design.md section 5).
CHOICES = {
    "grid_inputs": ("quantized", "float"),  # the block's inputs and producers in the search: quantized model's / float
    "act_search": ("zero", "midpoint", "both"),  # activation ranges shrunk toward zero, the midpoint, or both
    "jlss_param": ("log", "linear"),  # JLSS trains log(m), log(s) or m, s themselves (the official code)
    "jlss_loss": ("cosine", "mse", "cosine+mse"),
    "jlss_inputs": ("quantized", "float"),  # the quantized block's inputs: the quantized model's / float model's
    "recipe": ("default", "official"),
}
# What recipe "official" sets besides the family's settings (ModelFamily.official_jlss): the public
# PTQ4VM code's (docs/design.md section 5 lists each with its file and line).
OFFICIAL = {
    "grid_candidates": 100, "grid_norm": 2.4, "grid_samples": 256, "grid_inputs": "float", "act_search": "midpoint",
    "jlss_weight_decay": 1e-5, "jlss_grad_clip": 2.0, "jlss_param": "linear", "jlss_loss": "cosine",
    "jlss_shuffle": False, "jlss_inputs": "quantized",
}
_STAGE_INDEX = {"smooth": 1, "grid_search": 2, "jlss": 3}


def _field_defaults(cls) -> dict:
    """A dataclass's field defaults by name (the values an option "was not set" has)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths, method, JLSS hyper-parameters and the vector quantization.

    ``alpha`` is SmoothQuant's migration strength and ``linears`` the quantized linears (by last
    name component); None takes the model family's (``ModelFamily.alpha``: 0.5 for Vim;
    ``ModelFamily.linears``) when :func:`ptq4vm_fx.prepare` resolves the config for the model
    (:meth:`for_family`). JLSS trains step sizes and smoothing scales block by block for
    ``jlss_epochs`` passes over the calibration set in batches of ``jlss_batch_size``, AdamW at
    ``jlss_lr`` (one rate, or (weight steps, activation steps, smoothing scales)), weight decay
    ``jlss_weight_decay``, gradient norm clipped at ``jlss_grad_clip`` (None: not clipped); ``jlss_param``,
    ``jlss_loss``, ``jlss_shuffle``, ``jlss_inputs``, ``grid_inputs``, ``act_search``: :data:`CHOICES`
    (docs/design.md section 5). ``recipe="official"`` takes the public PTQ4VM code's settings
    (:data:`OFFICIAL` and the family's ``official_jlss``) in :meth:`for_family`; its fields cannot
    be set too.

    The weight methods (``rtn``, ``vq_kmeans``, ``vq_convex``, ``vimvq``) take 1..8 weight bits and
    ``act_bits`` 16 (weights only); the VQ methods also take 2..8 (per-token static activations,
    smoothed like ``pts_smooth``). ``vq`` (VQ methods only) is the codebook and its calibration;
    None takes the default for ``weight_bits`` (w3: k=64, d=2; w2: k=256, d=4; w1: k=256, d=8), and
    its nominal bits log2(k)/d must equal ``weight_bits``. ``incremental`` is set by the method
    (``vq_convex``: False, ``vimvq``: True).
    """

    weight_bits: int = 8
    act_bits: int = 8
    method: str = "ptq4vm"
    alpha: float | None = None
    linears: tuple[str, ...] | None = None
    grid_candidates: int = 100
    grid_norm: float = 2.4
    grid_samples: int = 256
    grid_inputs: str = "quantized"
    act_search: str = "zero"
    jlss_epochs: int = 10
    jlss_batch_size: int = 16
    jlss_lr: float | tuple[float, float, float] = 2e-3
    jlss_weight_decay: float = 0.0
    jlss_grad_clip: float | None = None
    jlss_param: str = "log"
    jlss_loss: str = "cosine"
    jlss_shuffle: bool = True
    jlss_inputs: str = "quantized"
    seed: int = 0
    recipe: str = "default"
    vq: VQConfig | None = None
    preset: str = field(default="", compare=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self._check_bits()
        if self.method in VQ_METHODS:
            object.__setattr__(self, "vq", _method_vq(self.method, self.weight_bits, self.vq))
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.linears is not None:
            if isinstance(self.linears, str) or not self.linears or not all(isinstance(n, str) for n in self.linears):
                raise InputError(f"linears must be a non-empty list of linear names, got {self.linears!r}")
            object.__setattr__(self, "linears", tuple(self.linears))
        if self.grid_candidates < 1 or self.grid_samples < 1 or self.jlss_epochs < 0 or self.jlss_batch_size < 1:
            raise InputError("grid_candidates, grid_samples, jlss_batch_size must be >= 1 and jlss_epochs >= 0")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if isinstance(self.jlss_lr, (list, tuple)):
            object.__setattr__(self, "jlss_lr", tuple(float(lr) for lr in self.jlss_lr))
        if any(lr <= 0 for lr in self.jlss_lrs) or len(self.jlss_lrs) != 3:
            raise InputError(f"jlss_lr must be a positive rate or three (weight steps, activation steps, smoothing "
                             f"scales), got {self.jlss_lr!r}")
        if self.jlss_grad_clip is not None and self.jlss_grad_clip <= 0:
            raise InputError(f"jlss_grad_clip must be positive or None, got {self.jlss_grad_clip}")
        defaults = _field_defaults(QuantConfig)
        changed = [name for name in unused_options(self.method, self.act_bits)
                   if getattr(self, name) != defaults[name]]
        if changed:
            raise _unused_option_error(changed[0], self.method, self.act_bits)

    def _check_bits(self) -> None:
        w, a = self.weight_bits, self.act_bits
        if self.method in PTQ_METHODS:
            for name, bits in (("weight_bits", w), ("act_bits", a)):
                if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
                    raise InputError(f"{name} must be an int in [2, 8], got {bits!r}"
                                     + (f" (weight-only configs are for {', '.join(WEIGHT_METHODS)})"
                                        if bits == FLOAT_ACT_BITS else ""))
            return
        if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 8:
            raise InputError(f"weight_bits must be an int in [1, 8] for {self.method}, got {w!r}")
        allowed = "16 (weights only)" if self.method == "rtn" else "16 (weights only) or an int in [2, 8]"
        if not isinstance(a, int) or isinstance(a, bool) or not (
            a == FLOAT_ACT_BITS or (self.method in VQ_METHODS and 2 <= a <= 8)
        ):
            raise InputError(f"act_bits must be {allowed} for {self.method}, got {a!r}")

    @property
    def weight_only(self) -> bool:
        """Activations stay floating point."""
        return self.act_bits == FLOAT_ACT_BITS

    @property
    def vector_quantized(self) -> bool:
        return self.method in VQ_METHODS

    @property
    def granularity(self) -> str | None:
        """Activation granularity; None for a weight-only config."""
        return None if self.weight_only else METHODS[self.method][0]

    @property
    def smooth(self) -> bool:
        return METHODS[self.method][1] and not self.weight_only

    @property
    def grid_search(self) -> bool:
        return METHODS[self.method][2]

    @property
    def jlss(self) -> bool:
        return METHODS[self.method][3] and self.jlss_epochs > 0

    @property
    def jlss_lrs(self) -> tuple[float, float, float]:
        """JLSS's learning rates of (weight steps, activation steps, smoothing scales)."""
        return self.jlss_lr if isinstance(self.jlss_lr, tuple) else (self.jlss_lr,) * 3

    @property
    def name(self) -> str:
        return f"{self.method}-w{self.weight_bits}a{self.act_bits}"

    def for_family(self, family) -> QuantConfig:
        """This config with the family's defaults (``linears``, and ``alpha`` where the method smooths)
        in place of None; linears the family does not have (``family.linears``: names or fnmatch
        patterns such as ``"x_proj_[0-9]*"``; a name the pattern covers, ``"x_proj_0"``, is one) are refused."""
        linears = self.linears if self.linears is not None else family.linears
        unknown = sorted(name for name in linears if not selects(family.linears, name))
        if unknown:
            raise InputError(f"linears {unknown} are not quantizable linears of a {family.name} model; "
                             f"choose from {', '.join(family.linears)}")
        alpha = self.alpha if self.alpha is not None or not self.smooth else family.alpha
        return dataclasses.replace(self, **{"linears": tuple(linears), "alpha": alpha, **self._recipe(family)})

    def _recipe(self, family) -> dict:
        """The fields recipe "official" sets for ``family`` (none for "default"); a field set to
        another value than its default and the recipe's is refused."""
        if self.recipe == "default":
            return {}
        if family.official_jlss is None:
            raise InputError(f"recipe official: the public PTQ4VM code has no settings for {family.name} models "
                             "(it has Vim's and VMamba's); use recipe default")
        settings = {**OFFICIAL, **family.official_jlss, "alpha": family.alpha}
        defaults = _field_defaults(QuantConfig)
        for name, value in settings.items():
            if getattr(self, name) not in (defaults[name], value):
                raise InputError(f"recipe official sets {name} ({value!r} for {family.name}); to change it, "
                                 "use recipe default and set every option")
        return settings

    def to_dict(self) -> dict:
        """Plain values; ``vq`` as VQConfig's dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown QuantConfig fields: {sorted(unknown)}")
        d = dict(d)
        for name in ("linears", "jlss_lr"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        if isinstance(d.get("vq"), dict):
            d["vq"] = VQConfig.from_dict(d["vq"])
        return cls(**d)

    @classmethod
    def preset_config(cls, preset: str, method: str = "ptq4vm", **overrides) -> QuantConfig:
        """``QuantConfig.preset_config("w4a4", "smoothquant")``; ``overrides`` set other fields, and
        only those the method reads (``jlss_epochs=5`` for ``ptq4vm``, not for ``smoothquant``).
        ``vq`` (VQ methods) is a VQConfig or a dict of VQConfig fields overriding the preset's
        codebook (``vq={"steps": 200}``; ``{"d": 2}`` alone takes k = 2^(bits * d))."""
        key = preset.lower()
        if key not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if method in METHODS and method not in PRESET_METHODS[key]:
            raise InputError(f"preset {key} is not for method {method!r}: it is for "
                             f"{', '.join(PRESET_METHODS[key])}")
        fixed = {"weight_bits", "act_bits", "method", "preset"} & set(overrides)
        if fixed:
            raise InputError(f"{sorted(fixed)[0]} is set by the preset and method arguments, not as an option")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown QuantConfig options: {sorted(unknown)}")
        w, a = PRESETS[key]
        if method in METHODS:
            unused = [name for name in unused_options(method, a) if name in overrides]
            if unused:
                raise _unused_option_error(unused[0], method, a)
        if method in VQ_METHODS:
            overrides["vq"] = _preset_vq(key, w, overrides.get("vq"))
        return cls(weight_bits=w, act_bits=a, method=method, preset=key, **overrides)


def default_preset(method: str) -> str:
    """The preset a command uses for ``method`` when none is given: w8a8, or w2a16 for a weight method."""
    return "w2a16" if method in WEIGHT_METHODS else "w8a8"


def compatible(preset: str, method: str) -> bool:
    """Whether ``preset`` is one of ``method``'s (a sweep runs only these pairs)."""
    return method in PRESET_METHODS.get(preset.lower(), ())


def _default_vq(weight_bits: int) -> VQConfig:
    presets = {round(VQConfig.preset(name).bits): name for name in VQ_PRESETS}
    if weight_bits not in presets:
        raise InputError(f"no default codebook for {weight_bits}-bit weights (defaults: "
                         f"{', '.join(f'{b} bits' for b in sorted(presets))}): give vq=VQConfig(k=..., d=...)")
    return VQConfig.preset(presets[weight_bits])


def _preset_vq(preset: str, weight_bits: int, vq: VQConfig | dict | None) -> VQConfig:
    """The preset's VQConfig with ``vq``'s fields (a dict) in place, or ``vq`` itself (a VQConfig)."""
    if vq is None or isinstance(vq, VQConfig):
        return vq if vq is not None else _default_vq(weight_bits)
    if not isinstance(vq, dict):
        raise InputError(f"vq must be a VQConfig or a dict of its fields, got {type(vq).__name__}")
    fields = {**_default_vq(weight_bits).to_dict(), **vq}
    if "d" in vq and "k" not in vq:
        fields["k"] = VQConfig.from_bits(weight_bits, vq["d"]).k
    return VQConfig.from_dict(fields)


def _method_vq(method: str, weight_bits: int, vq: VQConfig | None) -> VQConfig:
    """``vq`` (or the default for the bits) checked against the bits and the method: ``incremental``
    set by the method, fields the method does not read refused."""
    if vq is None:
        vq = _default_vq(weight_bits)
    if not isinstance(vq, VQConfig):
        raise InputError(f"vq must be a VQConfig, got {type(vq).__name__}")
    if vq.bits != weight_bits:
        raise InputError(f"a codebook of k={vq.k} codewords of length d={vq.d} is log2(k)/d = {vq.bits:g} bits "
                         f"per weight, not weight_bits={weight_bits} (k = 2^(weight_bits * d) = "
                         f"{2 ** (weight_bits * vq.d)} for d={vq.d})")
    if method == "vq_convex":
        vq = dataclasses.replace(vq, incremental=False)
    elif not vq.incremental:
        raise InputError(f"method {method!r} confirms codes incrementally: incremental=False is method vq_convex")
    defaults = _field_defaults(VQConfig)
    for name in sorted(set(defaults) - {"k", "d", "incremental", *VQ_OPTIONS[method]}):
        if getattr(vq, name) != defaults[name]:
            users = [m for m in VQ_METHODS if name in VQ_OPTIONS[m]]
            raise InputError(f"option vq.{name} does nothing for method {method!r}; it is read by {', '.join(users)}")
    return vq


def unused_options(method: str, act_bits: int = 8) -> tuple[str, ...]:
    """The QuantConfig options that ``method`` never reads (those of the stages it does not run; a
    weight-only config, ``act_bits`` 16, runs no smoothing; ``vq`` is read by the VQ methods only)."""
    weight_only = method in WEIGHT_METHODS and act_bits == FLOAT_ACT_BITS
    unused = tuple(
        name
        for stage, names in STAGE_OPTIONS.items()
        if not METHODS[method][_STAGE_INDEX[stage]] or (weight_only and stage == "smooth")
        for name in names
    )
    return unused if method in VQ_METHODS else (*unused, "vq")


def _unused_option_error(option: str, method: str, act_bits: int = 8) -> InputError:
    if option == "vq":
        return InputError(f"option vq does nothing for method {method!r} (it runs no vector quantization); "
                          f"it is read by {', '.join(VQ_METHODS)}")
    stage = next(stage for stage, names in STAGE_OPTIONS.items() if option in names)
    if stage == "smooth" and METHODS[method][1]:
        return InputError(f"option {option} does nothing for method {method!r} at act_bits={act_bits} (weights "
                          "only: no smoothing); it smooths when activations are quantized too (w2a8)")
    users = [m for m, flags in METHODS.items() if flags[_STAGE_INDEX[stage]]]
    what = {"smooth": "no smoothing", "grid_search": "no clipping grid search", "jlss": "no JLSS"}[stage]
    return InputError(
        f"option {option} does nothing for method {method!r} (it runs {what}); it is read by {', '.join(users)}"
    )


def resolve_config(config: QuantConfig | str | None) -> QuantConfig:
    """A QuantConfig from a QuantConfig, a preset name ("w8a8") or None (W8A8 PTQ4VM)."""
    if config is None:
        return QuantConfig.preset_config("w8a8")
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return QuantConfig.preset_config(config)
    raise InputError(f"config must be a QuantConfig or a preset name, got {type(config).__name__}")
