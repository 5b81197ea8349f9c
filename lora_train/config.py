"""Training configuration: YAML files mapped onto dataclasses.

A config file has the sections `model`, `lora`, `data`, `optim`, `loss`, `train`, `eval`
(every one optional: missing keys keep their defaults). A file may start from a preset or another
file with `inherit: <name or path>`; presets live in `lora_train/configs/<name>.yaml`. Every key
can be overridden by a dotted name (`optim.lr`), which is what the CLI flags and the sweep use.

Unknown keys, wrong types and out-of-range values raise `UserError` naming the key and the file.
"""

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from lora_train.errors import UserError
from vggt_common.files import atomic_write

PRESET_DIR = Path(__file__).resolve().parent / "configs"

STRATEGIES = ("A", "B", "C", "custom")  # lora.strategy; A/B/C are described in lora_train/lora.py
BUILTIN_STRATEGIES = STRATEGIES[:3]
LAYER_KINDS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
LORA_INITS = ("default", "gaussian")
PARAMETER_GROUPS = ("aggregator", "camera_head", "depth_head", "point_head")
PATCH_SIZE = 14
# Keys whose values must be multiples of a number (the one rule that is not an interval, so a
# searched range cannot be checked at its ends alone).
MULTIPLE_OF = {"data.width": PATCH_SIZE, "eval.width": PATCH_SIZE}


@dataclass
class LoraSettings:
    """What to adapt and how.

    Attributes:
        strategy: "A", "B", "C" or "custom" (see `lora_train.lora`).
        rank: LoRA rank r.
        alpha: LoRA alpha; None means 2·rank (32 at r = 16, as the public ETH3D fork used). The
            update is scaled by alpha/r, or alpha/√r with `use_rslora`.
        dropout: dropout on the LoRA input.
        use_rslora: rank-stabilised scaling alpha/√r.
        use_dora: weight-decomposed LoRA (DoRA); adds a trainable magnitude vector per layer.
        modules_to_save: full module names trained in full and saved with the adapter (e.g.
            `depth_head.resize_layers.0`, which LoRA cannot wrap).
        target_regex: custom only: regex matched (`re.fullmatch`) against full module names;
            matching Linear/Conv2d layers are adapted.
        block_ranges: custom only: aggregator blocks to adapt. A string for both `frame_blocks`
            and `global_blocks`, or a mapping from those names to a string. A string is "all",
            "upper_half", "lower_half" or comma-separated indices and inclusive ranges
            ("0-3,20-23"). With `layer_kinds` set and this None: all blocks.
        layer_kinds: custom only: which block layers, a subset of qkv, proj, fc1, fc2; None with
            `block_ranges` set means all four.
        init: LoRA init, "default" (Kaiming A, zero B) or "gaussian" (Gaussian A, zero B). Both
            leave the base weights untouched, so a saved adapter applies to the original checkpoint.
    """

    strategy: str = "B"
    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()
    target_regex: str | None = None
    block_ranges: str | Mapping[str, str] | None = None
    layer_kinds: tuple[str, ...] | None = None
    init: str = "default"

    def __post_init__(self):
        self.modules_to_save = tuple(self.modules_to_save or ())
        if isinstance(self.layer_kinds, str):
            self.layer_kinds = (self.layer_kinds,)
        if self.layer_kinds is not None:
            self.layer_kinds = tuple(self.layer_kinds)
        self._validate()

    def _validate(self) -> None:
        def fail(key: str, why: str):
            raise UserError(f"lora.{key} = {getattr(self, key)!r}: {why}")

        if self.strategy not in STRATEGIES:
            fail("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            fail("rank", "must be a positive integer")
        if self.alpha is not None and not self.alpha > 0:
            fail("alpha", "must be > 0 (or null for 2 * rank)")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1)")
        if self.init not in LORA_INITS:
            fail("init", f"must be one of {', '.join(LORA_INITS)}")
        if self.layer_kinds is not None:
            unknown = [k for k in self.layer_kinds if k not in LAYER_KINDS]
            if unknown or not self.layer_kinds:
                fail("layer_kinds", f"must be a non-empty subset of {', '.join(LAYER_KINDS)}")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as err:
                fail("target_regex", f"invalid regex ({err})")
        custom_fields = [k for k in ("target_regex", "block_ranges", "layer_kinds") if getattr(self, k) is not None]
        if self.strategy == "custom" and not custom_fields:
            fail("strategy", "'custom' needs target_regex, block_ranges or layer_kinds")
        if self.strategy != "custom" and custom_fields:
            fail(custom_fields[0], f"only applies to strategy 'custom' (strategy is {self.strategy!r})")

    @property
    def lora_alpha(self) -> float:
        """The effective alpha (2·rank when `alpha` is None)."""
        return float(2 * self.rank if self.alpha is None else self.alpha)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LoraSettings":
        """Build from a plain dict (the `lora:` section of a YAML config); unknown keys → `UserError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise UserError(f"unknown lora config key '{key}' (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-friendly dict that `from_dict` turns back into these settings."""
        out = dataclasses.asdict(self)
        out["modules_to_save"] = list(self.modules_to_save)
        out["layer_kinds"] = None if self.layer_kinds is None else list(self.layer_kinds)
        if isinstance(self.block_ranges, Mapping):
            out["block_ranges"] = dict(self.block_ranges)
        return out


@dataclass
class ModelConfig:
    """Which VGGT to build and which weights to load before LoRA is applied."""

    preset: Literal["tiny", "vggt1b"] = "tiny"
    # model.pt / .safetensors path, "tiny-base" (cached tiny pretrained base), or null (random init)
    checkpoint: Optional[str] = "tiny-base"
    gradient_checkpointing: bool = False
    # storage dtype of the frozen aggregator weights; auto = bf16 under bf16 autocast on a GPU, else fp32
    base_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # regional torch.compile of the transformer blocks (lora_train/model/compile.py)
    attention_backend: Literal["default", "cudnn", "flash", "efficient"] = "default"  # preferred SDPA kernel on CUDA
    # VGGTConfig fields; upstream fine-tunes camera + depth, so the point head is off by default
    overrides: dict[str, Any] = field(default_factory=lambda: {"enable_point": False})


@dataclass
class DataConfig:
    """Multi-view windows. `root: null` → synthetic ETH3D-format scenes generated once into a cache."""

    root: Optional[str] = None
    scenes: Optional[list[str]] = None  # null = every scene under root
    num_views: int = 3
    width: int = 126
    batch_size: int = 1  # per process
    num_workers: int | Literal["auto"] = "auto"  # background loaders; auto: CPUs on CUDA, 0 on CPU
    color_jitter: bool = False
    cache_dir: Optional[str] = None  # decoded-window cache; null = data module default
    max_train_windows: Optional[int] = None
    synthetic_family: Literal["facade", "generic"] = "facade"
    synthetic_scenes: int = 6
    synthetic_seed: int = 0


@dataclass
class OptimConfig:
    """AdamW with per-step linear warmup then cosine decay, accumulation and per-group clipping."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.1  # share of all optimizer steps spent warming up linearly from 0
    final_lr_ratio: float = 0.01  # cosine ends at lr * final_lr_ratio
    grad_accum_steps: int = 1
    fused: bool = True  # fused AdamW kernel on CUDA (CPU keeps PyTorch's default implementation)
    # max grad L2 norm per parameter group; groups match by substring of the parameter name
    clip_norms: dict[str, float] = field(
        default_factory=lambda: {"aggregator": 1.0, "depth_head": 1.0, "camera_head": 1.0}
    )


@dataclass
class LossConfig:
    """Weights of the upstream VGGT objective (see `lora_train.losses.VGGTLoss`)."""

    camera_weight: float = 5.0
    depth_weight: float = 1.0
    gamma: float = 0.6
    weight_trans: float = 1.0
    weight_rot: float = 1.0
    weight_focal: float = 0.5
    depth_gamma: float = 1.0
    depth_alpha: float = 0.2
    valid_range: float = 0.98
    gradient_loss: Literal["grad", "none"] = "grad"


@dataclass
class TrainLoopConfig:
    """Loop length, seeding, device and outputs."""

    epochs: int = 3
    steps_per_epoch: Optional[int] = None  # optimizer steps per epoch; null = one pass over the data
    seed: int = 42
    output_dir: str = "runs/lora"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    save_checkpoints: bool = True
    keep_checkpoints: int = 0  # 0 = keep every epoch's checkpoint
    overwrite: bool = False  # start afresh in an output_dir that holds another run's checkpoints
    progress_bar: bool = True
    # Test hook for the divergence guard: make the loss NaN at this global step (never set in real runs).
    inject_nan_at_step: Optional[int] = None
    # Test hook for out-of-memory handling: act as a GPU of this many GiB, i.e. raise
    # torch.cuda.OutOfMemoryError at the first step when lora_train.memory predicts a higher peak.
    inject_oom_above_gib: Optional[float] = None


@dataclass
class EvalConfig:
    """Validation after every epoch and the `lora_train.evaluate` CLI.

    The validation protocol (`num_views`, `width`, `max_windows`, `seed`, `scenes`) fixes which
    windows are scored, independently of how a run trains: two runs with the same protocol on the
    same data are scored on the same windows, whatever their `data.*` or `train.seed`
    (`validation_protocol` resolves the defaults).
    """

    align: Literal["median", "none", "median_frame", "lsq"] = "median"
    every_epochs: int = 1
    num_visualizations: int = 4
    num_views: Optional[int] = None  # views per validation window; null = data.num_views
    width: Optional[int] = None  # pixels; null = data.width
    max_windows: Optional[int] = None  # null = every validation window
    seed: int = 0  # picks the windows when max_windows is below their number
    scenes: Optional[list[str]] = None  # validation scenes; null = stable hash-based scene split
    # Forgetting check (`lora_train.evaluate.build_retention_set`): a final evaluation also scores base
    # and adapter on every scene of a set from the base's own domain, with the protocol above.
    retention_root: Optional[str] = None  # an ETH3D-format root; null = none (or retention_synthetic)
    retention_synthetic: Optional[Literal["facade", "generic"]] = None  # cached synthetic scenes of a family


@dataclass
class TrainConfig:
    """A whole fine-tuning run; `load_config` builds it from YAML, `to_dict`/`flat` log it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-serialisable), e.g. for logging as run parameters."""
        return _to_plain(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view: {"optim.lr": 1e-4, ...}."""
        out = {}

        def walk(prefix, value):
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (following `inherit:`), apply dotted overrides and validate.

    Args:
        path: YAML file, or a preset name (`default`, `strategy_b`, `tiny_demo`, ...); None = defaults.
        overrides: {"optim.lr": 1e-4, "lora.rank": 8, ...}; string values are parsed as YAML scalars.
    """
    config = TrainConfig()
    if path is not None:
        source = str(path)
        raw = _read_with_inheritance(_resolve(source, base_dir=Path.cwd()), seen=())
        config = config_from_dict(_deep_merge(config.to_dict(), raw), source=source)
    if overrides:
        config = apply_overrides(config, overrides)
    validate(config, "config")
    return config


def config_from_dict(raw: dict, source: str = "dict") -> TrainConfig:
    """Build and validate a config from a nested dict (e.g. one logged by `to_dict`)."""
    config = _build(TrainConfig, raw, prefix="", source=source)
    validate(config, source)
    return config


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str = "override") -> TrainConfig:
    """A new validated config with dotted overrides applied (string values parsed as YAML scalars)."""
    raw = config.to_dict()
    for key, value in overrides.items():
        _set_dotted(raw, key, _parse_scalar(value) if isinstance(value, str) else value, source=source)
    return config_from_dict(raw, source=source)


def validate(config: TrainConfig, source: str = "config") -> None:
    """Range checks that types alone cannot express."""

    def check(ok: bool, key: str, why: str):
        if not ok:
            raise UserError(f"{source}: {key} {why}")

    d, o, t = config.data, config.optim, config.train
    check(d.num_views >= 1, "data.num_views", f"must be >= 1, got {d.num_views}")
    check(d.width >= PATCH_SIZE and d.width % MULTIPLE_OF["data.width"] == 0, "data.width",
          f"must be a positive multiple of {MULTIPLE_OF['data.width']}, got {d.width}")
    check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    check(d.num_workers == "auto" or d.num_workers >= 0, "data.num_workers", f"must be >= 0 or auto, got {d.num_workers}")
    check(d.synthetic_scenes >= 2, "data.synthetic_scenes", f"must be >= 2 (train + val), got {d.synthetic_scenes}")
    check(d.max_train_windows is None or d.max_train_windows >= 1, "data.max_train_windows",
          f"must be >= 1 or null, got {d.max_train_windows}")
    check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", f"must be two values in [0, 1), got {o.betas}")
    check(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    check(0 <= o.final_lr_ratio <= 1, "optim.final_lr_ratio", f"must be in [0, 1], got {o.final_lr_ratio}")
    check(o.grad_accum_steps >= 1, "optim.grad_accum_steps", f"must be >= 1, got {o.grad_accum_steps}")
    for name, norm in o.clip_norms.items():
        check(name in PARAMETER_GROUPS, f"optim.clip_norms.{name}", f"is not a parameter group ({', '.join(PARAMETER_GROUPS)})")
        check(norm > 0, f"optim.clip_norms.{name}", f"must be > 0, got {norm}")
    check(config.loss.camera_weight >= 0, "loss.camera_weight", "must be >= 0")
    check(config.loss.depth_weight >= 0, "loss.depth_weight", "must be >= 0")
    check(
        not (config.model.base_dtype == "bf16" and t.precision == "fp32"),
        "model.base_dtype",
        "bf16 needs bf16 autocast (train.precision bf16, or auto on a GPU), got train.precision fp32",
    )
    check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    check(t.steps_per_epoch is None or t.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1 or null")
    check(t.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0")
    check(config.eval.every_epochs >= 1, "eval.every_epochs", "must be >= 1")
    check(config.eval.num_visualizations >= 0, "eval.num_visualizations", "must be >= 0")
    e = config.eval
    check(e.num_views is None or e.num_views >= 1, "eval.num_views", f"must be >= 1 or null, got {e.num_views}")
    check(e.width is None or (e.width >= PATCH_SIZE and e.width % MULTIPLE_OF["eval.width"] == 0), "eval.width",
          f"must be a positive multiple of {MULTIPLE_OF['eval.width']} or null, got {e.width}")
    check(e.max_windows is None or e.max_windows >= 1, "eval.max_windows", f"must be >= 1 or null, got {e.max_windows}")
    check(e.retention_root is None or e.retention_synthetic is None, "eval.retention_root",
          "and eval.retention_synthetic name two retention sets; set one of them")
    try:
        vggt_config(config.model)
    except UserError as err:
        raise UserError(f"{source}: model.overrides: {err}") from None
    ckpt = config.model.checkpoint
    if ckpt not in (None, "tiny-base"):
        check(Path(ckpt).expanduser().is_file(), "model.checkpoint", f"file not found: {ckpt}")
    check(
        not (ckpt == "tiny-base" and config.model.preset != "tiny"),
        "model.checkpoint",
        "'tiny-base' only fits model.preset tiny",
    )


def validation_protocol(config: TrainConfig) -> dict[str, Any]:
    """The resolved validation protocol: which windows every validation of this config scores.

    Returns:
        `{"num_views", "width", "max_windows", "seed", "scenes"}` with the `eval.*` defaults
        filled in from `data.*`. Nothing else (not `train.seed`, not the other training settings)
        decides the validation windows.
    """
    e, d = config.eval, config.data
    return {
        "num_views": e.num_views if e.num_views is not None else d.num_views,
        "width": e.width if e.width is not None else d.width,
        "max_windows": e.max_windows,
        "seed": e.seed,
        "scenes": e.scenes,
    }


def vggt_config(model: ModelConfig):
    """The `VGGTConfig` a `model:` section describes (preset + overrides + checkpointing switch)."""
    from lora_train.model import VGGTConfig

    return VGGTConfig.from_dict(
        {"preset": model.preset, **model.overrides, "gradient_checkpointing": model.gradient_checkpointing}
    )


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); `load_config(path)` reads it back."""
    return atomic_write(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# --- YAML reading -------------------------------------------------------------------------------


def _resolve(name: str, base_dir: Path) -> Path:
    """A preset name (`strategy_a`) or a path (absolute, or relative to the including file)."""
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        candidates.insert(0, base_dir / name)
    if not name.endswith((".yaml", ".yml")) and "/" not in name:
        candidates.append(PRESET_DIR / f"{name}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise UserError(f"config not found: {name} (not a file; presets: {presets})")


def _read_with_inheritance(path: Path, seen: tuple) -> dict:
    if path in seen:
        raise UserError(f"{path}: circular 'inherit' chain")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop("inherit", None)
    _check_keys(raw, TrainConfig, prefix="", source=str(path))
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise UserError(f"{path}: inherit must be a preset name or a path, got {parent!r}")
    base = _read_with_inheritance(_resolve(parent, base_dir=path.parent), seen + (path,))
    return _deep_merge(base, raw)


def _check_keys(raw: dict, cls, prefix: str, source: str) -> None:
    """Early unknown-key check, so the error names the file that has the typo."""
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if key not in hints:
            raise UserError(f"{source}: unknown config key '{prefix}{key}' (known: {', '.join(hints)})")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            _check_keys(value, hints[key], f"{prefix}{key}.", source)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "clip_norms":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    cls = TrainConfig
    node = raw
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is not None and part not in hints:
            raise UserError(f"{source}: unknown config key '{dotted}' ('{part}' is not one of {', '.join(hints)})")
        if i == len(parts) - 1:
            node[part] = value
            return
        if hints is not None:
            cls = hints[part]
        elif _origin(cls) is not dict:
            raise UserError(f"{source}: config key '{'.'.join(parts[: i + 1])}' has no sub-keys")
        else:
            cls = typing.get_args(cls)[1] if typing.get_args(cls) else Any
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]


# --- dict → dataclass with type checks -----------------------------------------------------------


def _origin(tp):
    return typing.get_origin(tp)


def _build(cls, raw: Any, prefix: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise UserError(f"{source}: unknown config key '{prefix}{key}' (known: {', '.join(hints)})")
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: invalid '{prefix.rstrip('.')}' section: {err}") from None


def _convert(tp, value: Any, key: str, source: str):
    def bad(expected: str):
        return UserError(f"{source}: config key '{key}' must be {expected}, got {value!r}")

    if tp is Any:
        return value
    origin = _origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad(_describe(tp))
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source)
            except UserError as err:
                errors.append(err)
        raise bad(_describe(tp))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise bad("one of " + ", ".join(map(str, choices)))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, f"{key}.{k}", source) for k, v in value.items()}
    return value


def _describe(tp) -> str:
    """`int | Literal["auto"] | None` → "int or 'auto' or null"."""
    names = []
    for arg in typing.get_args(tp):
        if _origin(arg) is Literal:
            names += [repr(choice) for choice in typing.get_args(arg)]
        else:
            names.append("null" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " or ".join(names)


def _to_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value
