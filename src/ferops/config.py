"""Typed access to params.yaml and the project's paths (no import-time side effects)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from ferops.errors import ConfigError

log = logging.getLogger("ferops.config")


def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest parent holding dvc.yaml or params.yaml (else the cwd)."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists() or (p / "params.yaml").exists():
            return p
    return here


def in_project() -> bool:
    """Whether the cwd is in a ferops project: a dvc.yaml at or above it. A params.yaml alone is not one (a params
    file may live anywhere, passed with --params), so reading commands there get the `not_in_project` cure."""
    return (repo_root() / "dvc.yaml").exists()


def not_in_project(env_var: str, target: str) -> str:
    """The cure when a reading command runs outside any ferops project: the folder, or `env_var` set to `target`."""
    return (f"{Path.cwd()} is not in a ferops project — run from the project folder (or any folder under it), "
            f"or set {env_var} to {target}")


def store_root(root: Path | None = None) -> Path:
    """Where shared stores (mlflow.db, optuna.db) live: the repo root, also under `dvc exp run --temp`.

    DVC runs temp experiments in <repo>/.dvc/tmp/exps/<tmp>/; their runs must land in the real repo's stores.
    """
    root = Path(root or repo_root()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def sqlite_file(url: str, root: Path | None = None) -> Path | None:
    """The database file of a sqlite:/// URL; None for other URLs and in-memory databases. A relative path lies under
    the project's store root, not the cwd: every stage, `ferops dashboard` from a subfolder, and DVC's throw-away
    copies (`dvc exp run --temp`, `dvc queue`) then open the real project's file."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    path = Path(url[len("sqlite:///"):].partition("?")[0])  # `?timeout=30`: SQLAlchemy's options, not the file's name
    return path if path.is_absolute() else store_root(root) / path


def sqlite_url(url: str, root: Path | None = None) -> str:
    """`url` with its sqlite file made absolute by sqlite_file's rule, its query string kept; other URLs as given."""
    db = sqlite_file(url, root)
    query = url.partition("?")[2]
    return url if db is None else f"sqlite:///{db}" + (f"?{query}" if query else "")


def not_a_section(where: str, value: Any, keys: str = "") -> ConfigError:
    """The error for a params.yaml section given a value instead (`evaluate: tencrop`, `pruner: median`): read with
    .get(), it ended in a traceback. `keys` lists what goes under it."""
    return ConfigError(f"params.yaml {where}: {value!r} is not a section — its settings go indented under "
                       f"`{where.rsplit('.', 1)[-1]}:`, one `key: value` a line{f' ({keys})' if keys else ''}.")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml into a plain dict, with a readable error when it is missing or malformed."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: params file not found (run from the project root or pass --params).")
    if p.is_dir():  # e.g. `--params ../other-project`: read_text() would end in IsADirectoryError's traceback
        raise ConfigError(f"{p}: a folder, not a params file — name the file itself (e.g. {p / 'params.yaml'}).")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file — a params file is YAML (e.g. the project's params.yaml).") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at top level")
    for message in unknown_top_level(data, str(p)):  # `sead: 7`, or a setting that lost its indentation
        log.warning("%s", message)
    return data


def project_params(path: str | Path | None = None) -> dict[str, Any]:
    """The params a `ferops` command reads: `path` when given (it must exist: a typo must not fall back silently),
    else the params.yaml of the project the cwd is in, found like the MLflow store (so commands work from any
    subfolder); {} outside a project, where the defaults apply."""
    if path is not None:
        if not Path(path).exists():
            raise ConfigError(f"--params {path}: file not found — check the path, or leave --params out to use the "
                              "project's params.yaml.")
        return load_params(path)
    found = repo_root() / "params.yaml"
    return load_params(found) if found.exists() else {}


def train_data(params: dict[str, Any]) -> Path:
    """params.yaml train_deep.train_data: the train set of the deep models and their trials (the split's by default).
    The stages' fallback when no --train is given, so `mlflow run -e train_deep` trains on what `dvc repro` does."""
    return Path((params.get("train_deep") or {}).get("train_data") or "data/processed/split/train.npz")


def registry_names(params: dict[str, Any]) -> tuple[str, str]:
    """register.model_name and register.champion_alias of `params` (the defaults where unset): the one place
    `ferops predict`, `ferops serve`, the registry commands and the register stage take them from."""
    from ferops.constants import DEFAULT_CHAMPION_ALIAS, DEFAULT_MODEL_NAME

    reg = mapping(params, "register")
    return str(reg.get("model_name") or DEFAULT_MODEL_NAME), str(reg.get("champion_alias") or DEFAULT_CHAMPION_ALIAS)


def registry_challenger(params: dict[str, Any]) -> str:
    """register.challenger_alias of `params` (null / "": the default, as for the champion alias)."""
    from ferops.constants import DEFAULT_CHALLENGER_ALIAS

    return str(mapping(params, "register").get("challenger_alias") or DEFAULT_CHALLENGER_ALIAS)


# The keys each section's code reads (top level of the section). A key outside these is a typo or a leftover: it
# would be ignored silently, so `section` warns and suggests the closest known key.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "demo": ("max_epochs", "max_trials", "max_train_rows"),
    "ingest": ("raw_dir", "source", "on_bad_rows", "synthetic"),
    "validate": ("min_class_fraction", "max_duplicate_fraction", "max_blank_fraction"),
    "split": ("strategy", "fractions", "val_from_train", "duplicates", "drop_blank", "seed"),
    "augment": ("seed", "copies", "balance", "balance_target", "preview_n", "ops"),
    "train_baselines": ("val_max_rows", "train_max_rows", "models"),
    "tune": ("storage", "workers", "pruner", "families"),
    "train_deep": ("train_data", "use_tuned", "common", "models"),
    "evaluate": ("tta", "batch_size"),
    "register": ("model_name", "family", "champion_alias", "challenger_alias"),
}


# The keys of one deep model's config (train_deep.common, train_deep.models.<m>) that models.zoo and training read.
# Nothing else checks these names: a typo there (`widht:`, or one a profile adds with DVC's `+`) trained the defaults.
MODEL_KEYS: tuple[str, ...] = (
    "arch", "hidden", "filters", "dense", "blocks", "stages", "widths", "base_width", "bottleneck",
    "zero_init_residual", "se", "stem_stride", "stem_pool", "activation", "base_filters", "module_widths", "dropout",
    "online_aug", "aug_strength", "input_norm", "progressive", "fused_batchnorm", "optimizer", "lr", "weight_decay",
    "decay_norm_and_bias", "schedule", "warmup_epochs", "plateau_patience", "label_smoothing", "class_weights",
    "batch_size", "epochs", "early_stopping_patience", "time_budget_min", "batch_mix", "ema", "swa", "precision",
    "data_parallel", "steps_per_execution", "onednn_max_isa", "ensemble_seeds", "name")


def did_you_mean(key: Any, known: Any, otherwise: str) -> str:
    """` — did you mean `<closest known key>`?` for a mistyped `key`, else `otherwise` (say, the known keys)."""
    import difflib

    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" — did you mean `{close[0]}`?" if close else otherwise


def _unknown(where: str, keys: Any, known: tuple[str, ...]) -> list[str]:
    listed = f" (known: {', '.join(known)})"
    return [f"params.yaml {where}.{key}: unknown key, ignored{did_you_mean(key, known, listed)}"
            for key in keys if key not in known]


def unknown_model_keys(where: str, cfg: dict[str, Any]) -> list[str]:
    """One message per key of the model config at `where` (e.g. train_deep.models.resnet) that no code reads."""
    return _unknown(where, cfg or {}, MODEL_KEYS)


def unknown_keys(name: str, sect: dict[str, Any]) -> list[str]:
    """One message per key of section `name` that no code reads, with the closest known key when there is one."""
    known = KNOWN_KEYS.get(name)
    return [] if known is None else _unknown(name, sect, known)


def unknown_top_level(params: dict[str, Any], where: str = "params.yaml") -> list[str]:
    """One message per top-level key of `params` that no code reads: a typo (`sead:`) or a section's setting that
    lost its indentation (`drop_blank: true` under `split:` but at column 0), which `section` never sees."""
    top = ("seed", *KNOWN_KEYS)
    messages = []
    for key in params:
        if key in top:
            continue
        owners = [name for name, keys in KNOWN_KEYS.items() if key in keys]
        hint = (f" — a setting of `{owners[0]}:`? Indent it under that section." if len(owners) == 1
                else did_you_mean(key, top, f" (top-level keys: {', '.join(top)})"))
        messages.append(f"{where} {key}: unknown top-level key, ignored{hint}")
    return messages


def mapping(params: dict[str, Any], name: str) -> dict[str, Any]:
    """params[name] as a section's mapping ({} when absent or empty); ConfigError when it is a value instead."""
    sect = params.get(name) or {}
    if not isinstance(sect, dict):
        raise not_a_section(name, sect, f"keys: {', '.join(KNOWN_KEYS[name])}" if name in KNOWN_KEYS else "")
    return sect


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One stage's params section; the error names the missing key, and unknown keys (typos) are warned about."""
    if name not in params:
        raise ConfigError(f"params.yaml has no `{name}:` section (one section per stage).")
    sect = mapping(params, name)
    for message in unknown_keys(name, sect):
        log.warning("%s", message)
    return sect


def number_problem(value: Any, *, whole: bool = False, low: float | None = None, high: float | None = None) -> str | None:
    """None when `value` is a number (`whole`: an integer) within [low, high], else what it should be, e.g.
    "a whole number ≥ 1" — for the messages of config checks (a bare int("ten") would end in a traceback)."""
    try:
        x = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if (low is None or x >= low) and (high is None or x <= high) and x == x and (x.is_integer() or not whole):
        return None
    bounds = " and".join(b for b in (f" ≥ {low:g}" if low is not None else "", f" ≤ {high:g}" if high is not None else "") if b)
    return ("a whole number" if whole else "a number") + bounds


def number(sect: dict[str, Any], name: str, key: str, default: float, *, whole: bool = False,
           low: float | None = None, high: float | None = None) -> Any:
    """sect[key] (else `default`) as an int (`whole`) or float within [low, high]; ConfigError naming
    `params.yaml <name>.<key>` otherwise (`params.yaml <key>` when `name` is "": a top-level key such as seed)."""
    value = sect.get(key, default)
    problem = number_problem(value, whole=whole, low=low, high=high)
    if problem:
        raise ConfigError(f"params.yaml {name + '.' if name else ''}{key}: {value!r} is not {problem}.")
    return int(float(value)) if whole else float(value)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (dicts merge, other values replace)."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def locate_param(exc: ConfigError, sources: list[tuple[str, Any]]) -> ConfigError:
    """A `key=value: why` ConfigError raised deep inside training, prefixed with where params.yaml sets that key:
    the first of `sources` ((dotted path, section) pairs, most specific first) that holds it. Unchanged when no
    source does (a default, or a value that did not come from params.yaml)."""
    text = str(exc)
    head = re.match(r"([A-Za-z_]\w*)(?:\.\w+)*=", text)
    if head is None or text.startswith("params.yaml"):
        return exc
    for path, sect in sources:
        if isinstance(sect, dict) and head.group(1) in sect:
            return type(exc)(f"params.yaml {path}.{text}")
    return exc
