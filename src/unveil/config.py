"""Typed configuration tree: YAML files plus dotted ``key=value`` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error, not a
silently ignored setting.  Validation errors are turned into one sentence that names the
key and lists the valid ones.  The resolved config is written next to every output and
into every checkpoint, so a run can always be rebuilt from its folder.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unveil.errors import ConfigError
from unveil.family_registry import DEFAULT_FAMILY
from unveil.family_registry import SPECS as FAMILY_SPECS
from unveil.family_registry import family_spec as _family_spec
from unveil.family_registry import upgrade_config_tree as _upgrade_family_config
from unveil.fusion_registry import FUSIONS, fusion_spec


class Section(BaseModel):
    """Base of every config section: unknown keys and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Section):
    """Cohort layout and the meaning of label values."""

    id_column: str = "id"
    table: str | None = Field(
        default=None,
        description="clinical table file inside the cohort (default: clinical.csv or clinical.xlsx)",
    )
    labels: dict[str, int] = Field(
        default_factory=lambda: {"right_lung": 1, "left_lung": 2, "airway": 3},
        description="label name -> integer value in the mask; 0 is always background",
    )
    lung_labels: list[str] = Field(default_factory=lambda: ["right_lung", "left_lung"])
    airway_label: str | None = "airway"
    memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        description=(
            "GiB of preprocessed training volumes to hold in memory; beyond it they are "
            "written once to RUN/data-cache and read a patch at a time (same patches, same "
            "weights); null holds them all in memory"
        ),
    )

    @model_validator(mode="after")
    def _labels_consistent(self) -> DataConfig:
        values = list(self.labels.values())
        if any(v <= 0 for v in values):
            raise ValueError("data.labels values must be positive integers (0 is background)")
        if len(set(values)) != len(values):
            raise ValueError("data.labels gives the same value to two names")
        for name in [*self.lung_labels, *([self.airway_label] if self.airway_label else [])]:
            if name not in self.labels:
                raise ValueError(
                    f"label name '{name}' is not among data.labels ({', '.join(self.labels)})"
                )
        return self


#: The HU window ``(low, high)`` of ``preprocess.hu_window`` by default, and the one
#: fallback of every reader of a window that a run or caller did not record.
DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 500.0)


class PreprocessConfig(Section):
    """What the network sees: orientation, spacing, HU window, patches."""

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = Field(
        default=None, description="target voxel spacing in mm; null keeps each scan's own"
    )
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    patch_size: tuple[int, int, int] = (64, 64, 32)
    pos_fraction: float = Field(default=0.75, ge=0.0, le=1.0)
    position_channel: bool = Field(
        default=False,
        description=(
            "add a mask channel with the height inside the lungs (-1 at the lung bases, +1 at "
            "the apices, from world coordinates) so zone-specific effects are easy to learn"
        ),
    )

    depth_channel: bool = Field(
        default=False,
        description=(
            "add a mask channel with the depth inside each lung (-1 at the surface, +1 at the "
            "deepest point) so peripheral and central effects are easy to learn"
        ),
    )

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("preprocess.hu_window must be [low, high] with low < high")
        return v

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        if (
            len(v) != 3
            or {c for c in v} - set("RLAPSI")
            or len({c for c in v.replace("L", "R").replace("P", "A").replace("I", "S")}) != 3
        ):
            raise ValueError("preprocess.orientation must be three axis codes such as RAS or LPS")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing_positive(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("preprocess.spacing must be positive millimetres")
        return v


class SplitConfig(Section):
    """Patient-level train/val/test split, saved to ``splits.json`` and reused."""

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    file: str = "splits.json"

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("split.fractions must be three non-negative numbers summing to 1")
        return v


class TextConfig(Section):
    """Clinical text: template, encoder, dropout for training."""

    template: str = "phantom"
    encoder: str = "features"
    max_length: int = Field(default=128, ge=8)
    cond_dim: int = Field(default=128, ge=1, description="width of the trainable adapter output")
    field_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    prompt_dropout: float = Field(default=0.1, ge=0.0, le=1.0)
    lr_scale: float = Field(
        default=1.0,
        gt=0.0,
        description="learning-rate multiplier of the text path (adapter, fusion units)",
    )
    cache_dir: str | None = None


#: A kind of the fusion registry (:data:`unveil.fusion_registry.FUSIONS`), checked by
#: :meth:`ModelConfig._fusion_registered` against the registry at validation time, so that a
#: kind registered at run time is accepted without editing this file.
FusionKind = str

#: A generator family of the family registry (:data:`unveil.family_registry.SPECS`),
#: checked by :meth:`ModelConfig._family_registered` at validation time, so that a family
#: registered at run time is accepted without editing this file.
FamilyName = str


class ModelConfig(Section):
    """The conditional 3D UNet shared by every family."""

    family: FamilyName = Field(
        default=DEFAULT_FAMILY,
        description="the generator family: a name of unveil.family_registry.SPECS",
    )
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = Field(default=1, ge=1)
    norm_groups: int = Field(default=8, ge=1)
    fusion: FusionKind = Field(
        default="affine",
        description="how the text enters the UNet: a kind of unveil.fusion_registry.FUSIONS",
    )
    fusion_levels: list[Literal["bottleneck", "decoder", "encoder"]] = Field(
        default_factory=lambda: ["bottleneck"]
    )
    heads: int = Field(default=4, ge=1)
    noise_input: bool = Field(default=False, description="GAN: add a noise channel to the input")
    out_activation: Literal["auto", "tanh", "linear"] = Field(
        default="auto",
        description=(
            "output of the network: auto is tanh for the GAN, linear for diffusion and rflow"
        ),
    )
    effect_knots: int = Field(
        default=0,
        ge=0,
        description=(
            "regional effect head: the text sets, per mask label, a density shift that is "
            "piecewise linear in the lung height with this many knots (0 = off; needs "
            "preprocess.position_channel)"
        ),
    )

    @field_validator("family")
    @classmethod
    def _family_registered(cls, v: str) -> str:
        if v not in FAMILY_SPECS:
            names = ", ".join(f"'{k}'" for k in FAMILY_SPECS)
            raise ValueError(f"use one of the registered families: {names}")
        return v

    @field_validator("fusion")
    @classmethod
    def _fusion_registered(cls, v: str) -> str:
        if v not in FUSIONS:
            kinds = ", ".join(f"'{k}'" for k in FUSIONS)
            raise ValueError(f"use one of the registered fusion kinds: {kinds}")
        return v

    @model_validator(mode="after")
    def _effect_knots(self) -> ModelConfig:
        if self.effect_knots == 1:
            raise ValueError("model.effect_knots must be 0 (off) or at least 2")
        if self.effect_knots and not fusion_spec(self.fusion).uses_text:
            raise ValueError(
                "model.effect_knots needs the text: set model.fusion to a text fusion or "
                "model.effect_knots to 0"
            )
        return self

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if fusion_spec(self.fusion).needs_heads:
            bad = [c for c in self.channels if c % self.heads]
            if bad:
                raise ValueError(
                    f"model.channels {list(self.channels)} must all be divisible by model.heads "
                    f"({self.heads}) for cross-attention; change one of them"
                )
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"model.channels {list(self.channels)} must all be divisible by model.norm_groups "
                f"({self.norm_groups})"
            )
        return self


class GanConfig(Section):
    loss: Literal["lsgan", "hinge"] = "lsgan"
    adv_weight: float = Field(
        default=1.0, ge=0.0, description="weight of the generator's adversarial term"
    )
    l1_weight: float = Field(default=100.0, ge=0.0)
    l1_mask_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="extra L1 weight inside the labelled mask (lungs, airway): 1 + w there, 1 elsewhere",
    )
    corr_weight: float = Field(default=0.0, ge=0.0)
    lowpass_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="weight of an L1 between block means (lowpass_size^3 voxels) of fake and "
        "real inside the labelled mask: the regional density the clinical claims are about",
    )
    lowpass_size: int = Field(default=4, ge=2, description="block edge (voxels) of lowpass_weight")
    lr_g: float = Field(default=1e-4, gt=0.0)
    lr_d: float = Field(default=4e-4, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.999)
    disc_channels: int = Field(default=32, ge=1)
    disc_layers: int = Field(default=3, ge=1)
    disc_text: bool = True


class DiffusionConfig(Section):
    """The ``diffusion`` and ``rflow`` families' settings (``rflow`` ignores the schedule,
    ``prediction`` and ``zero_terminal_snr``: it always predicts the velocity)."""

    process: Literal["ddpm", "rflow"] = Field(
        default="ddpm",
        description=(
            "training noise process: ddpm (model.family diffusion, sampled with ddim/ddpm) "
            "or rflow (model.family rflow, filled in for it); model.family diffusion with "
            "process rflow is read as model.family rflow"
        ),
    )
    timesteps: int = Field(default=1000, ge=2)
    schedule: str = "scaled_linear_beta"
    prediction: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    zero_terminal_snr: bool = Field(
        default=True,
        description=(
            "rescale the DDPM schedule so the last timestep is pure noise (Lin et al. 2024); "
            "without it the mean intensity of a 3D region leaks through x_T and the text "
            "cannot move it"
        ),
    )
    loss: Literal["l1", "l2"] = "l2"
    sampler: Literal["ddim", "rflow", "ddpm"] = "ddim"
    eta: float = Field(default=0.0, ge=0.0, description="DDIM eta (0 = deterministic)")
    sample_steps: int = Field(default=50, ge=1)
    guidance_scale: float = Field(default=1.0, ge=0.0)
    lr: float = Field(default=1e-4, gt=0.0)

    @model_validator(mode="after")
    def _prediction_defined_at_pure_noise(self) -> DiffusionConfig:
        if self.process == "ddpm" and self.zero_terminal_snr and self.prediction == "epsilon":
            raise ValueError(
                "diffusion.prediction 'epsilon' cannot recover the image at the pure-noise last "
                "timestep of a zero-terminal-SNR schedule; use v_prediction or sample, or set "
                "diffusion.zero_terminal_snr=false"
            )
        return self

    @model_validator(mode="after")
    def _sampler_matches_process(self) -> DiffusionConfig:
        if (self.process == "rflow") != (self.sampler == "rflow"):
            raise ValueError(
                f"diffusion.sampler '{self.sampler}' cannot sample a model trained with "
                f"diffusion.process '{self.process}'; use sampler rflow with process rflow, "
                "and ddim or ddpm with process ddpm"
            )
        return self


class TrainConfig(Section):
    steps: int = Field(default=1000, ge=0)
    batch_size: int = Field(default=2, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    amp: Literal["none", "bf16", "fp16"] = "none"
    ema_decay: float = Field(default=0.999, ge=0.0, lt=1.0)
    ckpt_every: int = Field(default=500, ge=1)
    keep_last: int = Field(default=3, ge=1)
    val_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=10, ge=1)
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    device: str = "auto"
    grad_clip: float | None = 1.0
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        default="constant",
        description="learning-rate decay over the run's steps (to 0 at the last step)",
    )
    warmup_steps: int = Field(default=0, ge=0, description="linear learning-rate warm-up")


class InferConfig(Section):
    overlap: float = Field(default=0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(default=1, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"


class Config(Section):
    """The whole tree; ``Config()`` is a valid default."""

    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gan: GanConfig = Field(default_factory=GanConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    @model_validator(mode="before")
    @classmethod
    def _family_upgrades(cls, data: Any) -> Any:
        # The registry's rewrites of the raw tree (a family's own defaults, an older
        # spelling of a family: model.family diffusion with diffusion.process rflow is rflow).
        return _upgrade_family_config(data)

    @model_validator(mode="after")
    def _effect_head_inputs(self) -> Config:
        # Checked here, on load, so a run is refused before anything is written.
        if self.model.effect_knots and not self.preprocess.position_channel:
            raise ValueError(
                "model.effect_knots needs the lung-height channel; set "
                "preprocess.position_channel: true or model.effect_knots: 0"
            )
        # Family-specific checks (e.g. the effect head of a diffusion model): the registry's.
        _family_spec(self.model.family).check_config(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- loading


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model that owns the key at ``loc[:-1]``."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return model


def _sentence(err: ValidationError, source: str) -> str:
    """Turn the first pydantic error into one sentence naming the key and the fix."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        model = _section_model(loc)
        valid = _valid_keys(model)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return (
            f"{source}: unknown config key '{key}'{hint}; valid keys under {where} are: "
            f"{', '.join(valid)}."
        )
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: config key '{key}' is invalid: {msg}{got_s}."


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' is not of the form key=value (for example train.steps=100)."
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; write it as section.key=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Load a YAML config (or the defaults), apply ``key=value`` overrides, validate.

    A YAML file may name a parent with ``base: other.yaml`` (resolved relative to it); the
    child's keys win.  Raises :class:`ConfigError` with one sentence on any problem.
    """
    tree: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        tree = _deep_merge(tree, _read_yaml_with_base(Path(path)))
        source = str(path)
    for ov in overrides:
        parts, value = _parse_override(ov)
        _set_dotted(tree, parts, value)
    if overrides:
        source = f"{source} with overrides"
    return config_from_dict(tree, source)


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict (for example the one stored in a checkpoint).

    A diffusion section written before ``zero_terminal_snr`` existed describes a model
    trained on the original schedule: it is read with ``zero_terminal_snr: false`` so the
    model is sampled on the schedule it learned.
    """
    diff = tree.get("diffusion") if isinstance(tree, dict) else None
    if isinstance(diff, dict) and "zero_terminal_snr" not in diff:
        tree = {**tree, "diffusion": {**diff, "zero_terminal_snr": False}}
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_sentence(err, source)) from None


def _read_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config.")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start} cannot be decoded); "
            "save it as UTF-8 (or check that --config names the YAML file, not another file)."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax.") from None
    if not isinstance(tree, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not a {type(tree).__name__}."
        )
    parent = tree.pop("base", None)
    if parent:
        ppath = (path.parent / parent).resolve()
        if ppath in seen:
            raise ConfigError(f"config file {path} names itself as a base through '{parent}'.")
        tree = _deep_merge(_read_yaml_with_base(ppath, (*seen, ppath)), tree)
    return tree


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def configs_dir() -> Path:
    """The ``configs/`` folder shipped with the package (source checkout or installed)."""
    here = Path(__file__).resolve()
    for cand in (here.parent / "resources" / "configs", here.parents[2] / "configs"):
        if cand.is_dir():
            return cand
    raise ConfigError("the shipped configs/ folder was not found; reinstall unveil.")


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config given as a path, or by the name of a shipped one (``diffusion-affine``)."""
    p = Path(name)
    if p.is_file():
        return p
    cand = configs_dir() / (p.name if p.suffix else f"{p.name}.yaml")
    if cand.is_file():
        return cand
    raise ConfigError(
        f"config {name} is neither a file nor a shipped config; give a path or one of: "
        f"{', '.join(sorted(q.stem for q in configs_dir().glob('*.yaml')))}."
    )
