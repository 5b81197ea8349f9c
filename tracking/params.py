"""Dotted parameter names and MLflow's batch limits.

MLflow stores params as flat string key/value pairs. Configs are nested dicts, so they are
flattened to dotted names (`{"lora": {"rank": 8}}` → `lora.rank = "8"`), the names the UI's
table, filters and parallel-coordinates plot show.
"""

import json
import logging
import math
from collections.abc import Iterable, Mapping

_log = logging.getLogger(__name__)

# Limits of one `log_batch` call and of stored values (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250


def flatten_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config to dotted MLflow params with string values.

    Lists of scalars become comma-separated (`lora.targets = "qkv,proj"`), other lists JSON;
    values longer than MLflow's 6000-character limit are truncated with a warning.

    Example: `{"lora": {"rank": 8, "targets": ["qkv", "proj"]}}` →
    `{"lora.rank": "8", "lora.targets": "qkv,proj"}`.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = param_value(name, value)
    return flat


def param_value(name: str, value) -> str:
    """One param value as MLflow stores it (a string within the length limit)."""
    if isinstance(value, (list, tuple)) and all(_is_scalar(v) for v in value):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return truncate(name, text, MAX_PARAM_VALUE_LENGTH)


def truncate(name: str, text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    _log.warning("value of %r has %d characters; truncated to MLflow's limit of %d", name, len(text), limit)
    return text[: limit - 3] + "..."


def best_metric_name(key: str) -> str:
    """`val/abs_rel` → `best/val_abs_rel` (MLflow keeps only the latest value of a metric)."""
    return key if key.startswith("best/") else "best/" + key.replace("/", "_")


def batches(metrics: list, params: list, tags: list) -> Iterable[tuple[list, list, list]]:
    """Split entities into `log_batch`-sized (metrics, params, tags) triples within every limit."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        p, params = params[:MAX_PARAMS_PER_BATCH], params[MAX_PARAMS_PER_BATCH:]
        t, tags = tags[:MAX_TAGS_PER_BATCH], tags[MAX_TAGS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


def finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
