"""QuantConfig: what to quantize and how. Frozen, self-validating, round-trips to a dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import InputError
from .models.family import selects

# Activation granularity and calibration of each method (see README "Methods").
METHODS = {
    # method: (activation granularity, smoothing, grid-search init, JLSS)
    "minmax": ("per_tensor", False, False, False),
    "dynamic": ("per_token_dynamic", False, False, False),
    "smoothquant": ("per_tensor", True, False, False),
    "pts": ("per_token", False, False, False),
    "pts_smooth": ("per_token", True, False, False),
    "ptq4vm": ("per_token", True, True, True),
}
PRESETS = {
    "w8a8": (8, 8),
    "w6a6": (6, 6),
    "w4a8": (4, 8),
    "w4a4": (4, 4),
}
# The options each stage of a method reads: an option of a stage the method does not run does nothing.
STAGE_OPTIONS = {
    "smooth": ("alpha",),
    "grid_search": ("grid_candidates", "grid_norm", "grid_samples"),
    "jlss": ("jlss_epochs", "jlss_batch_size", "jlss_lr", "jlss_weight_decay", "seed"),
}
_STAGE_INDEX = {"smooth": 1, "grid_search": 2, "jlss": 3}


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths, method and JLSS hyper-parameters.

    ``alpha`` is SmoothQuant's migration strength and ``linears`` the quantized linears (by last
    name component); None takes the model family's (``ModelFamily.alpha``: 0.5 for Vim;
    ``ModelFamily.linears``) when :func:`ptq4vm_fx.prepare` resolves the config for the model
    (:meth:`for_family`). JLSS trains step sizes and smoothing scales block by block for
    ``jlss_epochs`` passes over the calibration set.
    """

    weight_bits: int = 8
    act_bits: int = 8
    method: str = "ptq4vm"
    alpha: float | None = None
    linears: tuple[str, ...] | None = None
    grid_candidates: int = 100
    grid_norm: float = 2.4
    grid_samples: int = 256
    jlss_epochs: int = 10
    jlss_batch_size: int = 16
    jlss_lr: float = 2e-3
    jlss_weight_decay: float = 0.0
    seed: int = 0
    preset: str = field(default="", compare=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise InputError(f"{name} must be an int in [2, 8], got {bits!r}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.linears is not None:
            if isinstance(self.linears, str) or not self.linears or not all(isinstance(n, str) for n in self.linears):
                raise InputError(f"linears must be a non-empty list of linear names, got {self.linears!r}")
            object.__setattr__(self, "linears", tuple(self.linears))
        if self.grid_candidates < 1 or self.grid_samples < 1 or self.jlss_epochs < 0 or self.jlss_batch_size < 1:
            raise InputError("grid_candidates, grid_samples, jlss_batch_size must be >= 1 and jlss_epochs >= 0")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [name for name in unused_options(self.method) if getattr(self, name) != defaults[name]]
        if changed:
            raise _unused_option_error(changed[0], self.method)

    @property
    def granularity(self) -> str:
        return METHODS[self.method][0]

    @property
    def smooth(self) -> bool:
        return METHODS[self.method][1]

    @property
    def grid_search(self) -> bool:
        return METHODS[self.method][2]

    @property
    def jlss(self) -> bool:
        return METHODS[self.method][3] and self.jlss_epochs > 0

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
        return dataclasses.replace(self, linears=tuple(linears), alpha=alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown QuantConfig fields: {sorted(unknown)}")
        d = dict(d)
        if d.get("linears") is not None:
            d["linears"] = tuple(d["linears"])
        return cls(**d)

    @classmethod
    def preset_config(cls, preset: str, method: str = "ptq4vm", **overrides) -> QuantConfig:
        """``QuantConfig.preset_config("w4a4", "smoothquant")``; ``overrides`` set other fields, and
        only those the method reads (``jlss_epochs=5`` for ``ptq4vm``, not for ``smoothquant``)."""
        key = preset.lower()
        if key not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        fixed = {"weight_bits", "act_bits", "method", "preset"} & set(overrides)
        if fixed:
            raise InputError(f"{sorted(fixed)[0]} is set by the preset and method arguments, not as an option")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown QuantConfig options: {sorted(unknown)}")
        if method in METHODS:
            unused = [name for name in unused_options(method) if name in overrides]
            if unused:
                raise _unused_option_error(unused[0], method)
        w, a = PRESETS[key]
        return cls(weight_bits=w, act_bits=a, method=method, preset=key, **overrides)


def unused_options(method: str) -> tuple[str, ...]:
    """The QuantConfig options that ``method`` never reads (those of the stages it does not run)."""
    return tuple(
        name
        for stage, names in STAGE_OPTIONS.items()
        if not METHODS[method][_STAGE_INDEX[stage]]
        for name in names
    )


def _unused_option_error(option: str, method: str) -> InputError:
    stage = next(stage for stage, names in STAGE_OPTIONS.items() if option in names)
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
