"""Run folders as the report reads them, and their grouping into Table 3's variants.

A run folder (``idruid train --out RUN``) holds ``config.yaml`` and ``log.jsonl``; each
``idruid eval --out RUN/<folder>`` adds a subfolder whose ``metrics.json`` names its benchmark in
``settings.benchmark`` (``eval-shapes-mig``, or ``eval-mig`` in older folders). Runs whose resolved
configs differ only in the seed (and in settings that do not change results, like thread counts)
are one variant: one row of Table 3, its cells averaged over the seeds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import upgrade_keys
from ..errors import ConfigError, ReportError

# config keys that do not make a different variant: the seed, and run-time settings only
IGNORED_KEYS = frozenset(
    {
        "seed",
        "threads",
        "num_workers",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "out",
        "output_dir",
        "rl.held_out",  # the held-out reward is measured from its own noise: a diagnostic only
        "rl.held_out_every",
    }
)
# eval settings that may differ between the seeds of one variant
IGNORED_EVAL_SETTINGS = frozenset({"seed", "processes"})
# scorers that evaluations written before they were recorded used implicitly
EVAL_SETTING_DEFAULTS = {"detector": "analytic", "segmenter": "analytic", "judge": "analytic"}


def eval_settings(metrics: dict) -> dict:
    """An eval folder's sampling and scoring settings, older folders' implicit scorers filled in."""
    return {**EVAL_SETTING_DEFAULTS, **metrics.get("settings", {})}


ABSENT = "(unset)"  # value shown for a key that an older config.yaml does not have
ALGORITHM_NAMES = {"none": "no RL", "ppo": "PPO", "grpo": "GRPO", "sft": "SFT"}
LAMBDA_LABELS = {"lambda_dis": "λ_dis", "rl.lambda_rl": "λ_rl"}
MAX_NAME_KEYS = 3  # a row name lists at most this many extra config keys, else it gets "#k"


@dataclass(frozen=True)
class EvalFolder:
    benchmark: str
    path: Path
    metrics: dict
    quality: dict[str, float]  # numeric entries of quality.json; empty when there is none


@dataclass
class Run:
    path: Path
    name: str  # row name in Tables 1 and 2, and legend entry in the plots
    label: str | None  # the --name given to it, if any (names its Table 3 row)
    config: dict[str, Any]  # flattened: {"rl.algorithm": "ppo", "seed": 0, ...}
    evals: dict[str, EvalFolder]  # benchmark -> the eval folder used
    log: list[dict]
    notes: list[str] = field(default_factory=list)  # eval folders found but not used, and why

    @property
    def variant_key(self) -> tuple:
        return config_key(self.config)


@dataclass
class Variant:
    name: str
    runs: list[Run]

    @property
    def seeds(self) -> list:
        return [run.config.get("seed", ABSENT) for run in self.runs]


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.use_idm": True, ...} (dotted keys, as ``idruid train`` overrides)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from err


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (blank lines skipped); a bad line is named by its number."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path} line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ReportError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_quality(eval_dir: Path) -> dict[str, float]:
    """Numeric entries of the eval folder's quality.json (or images/quality.json, where
    ``idruid quality`` writes it by default); {} when there is none."""
    for path in (eval_dir / "quality.json", eval_dir / "images" / "quality.json"):
        if path.is_file():
            data = _read_json(path)
            if not isinstance(data, dict):
                raise ReportError(f"{path}: expected a JSON object")
            return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {}


def _preferred_names(benchmark: str) -> list[str]:
    return [f"eval-{benchmark}", f"eval-{benchmark.rsplit('-', 1)[-1]}"]


def find_evals(run_dir: Path) -> tuple[dict[str, EvalFolder], list[str]]:
    """Benchmark -> eval folder among the run's subfolders, and notes on folders not used. With
    several folders for one benchmark the one named ``eval-<benchmark>`` (or ``eval-mig`` /
    ``eval-sam``) wins; without such a name the choice is the user's, so it is an error."""
    found: dict[str, list[EvalFolder]] = {}
    notes = []
    for sub in sorted(p for p in run_dir.iterdir() if (p / "metrics.json").is_file()):
        metrics = _read_json(sub / "metrics.json")
        benchmark = metrics.get("settings", {}).get("benchmark") if isinstance(metrics, dict) else None
        if not isinstance(benchmark, str):
            notes.append(f"{sub.name}: metrics.json has no settings.benchmark, not used")
            continue
        found.setdefault(benchmark, []).append(EvalFolder(benchmark, sub, metrics, read_quality(sub)))
    evals = {}
    for benchmark, folders in found.items():
        if len(folders) == 1:
            evals[benchmark] = folders[0]
            continue
        preferred = [f for name in _preferred_names(benchmark) for f in folders if f.path.name == name]
        if not preferred:
            names = ", ".join(f.path.name for f in folders)
            raise ReportError(
                f"{run_dir}: several eval folders score {benchmark} ({names}); "
                f"name the one to report eval-{benchmark}"
            )
        evals[benchmark] = preferred[0]
        notes += [
            f"{f.path.name}: also scores {benchmark}, not used ({preferred[0].path.name} is)"
            for f in folders
            if f is not preferred[0]
        ]
    return evals, notes


def load_run(path: str | Path, label: str | None = None) -> Run:
    """One run folder: its flattened config, eval folders and log (empty when there is no log)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder")
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{path}: no config.yaml (is it a run folder from `idruid train --out`?)")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ReportError(f"{config_path}: not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise ReportError(f"{config_path}: expected a mapping of config keys")
    config = current_keys(config, config_path)
    evals, notes = find_evals(path)
    if not evals:
        raise ReportError(
            f"{path}: no eval folder (a subfolder with a metrics.json, "
            f"as `idruid eval --out {path}/eval-<benchmark>` writes)"
        )
    log_path = path / "log.jsonl"
    log = read_log(log_path) if log_path.is_file() else []
    return Run(path, label or path.name, label, {**_defaults(), **flatten(config)}, evals, log, notes)


def current_keys(config: dict, config_path: Path) -> dict:
    """A run's config.yaml with keys renamed since it was written under today's names
    (idruid.config.RENAMED_KEYS), so that old and new runs of one variant group together."""
    try:
        return upgrade_keys(config, str(config_path), warn=False)
    except ConfigError as err:
        raise ReportError(str(err)) from None


@functools.cache
def _defaults() -> dict[str, Any]:
    """Today's TrainConfig defaults, flattened. A key that an older config.yaml lacks is read at
    its default, so runs from before the key existed (e.g. `data`, added with LayoutSAM training)
    group with today's; a key whose default differs from the older behaviour would mix them."""
    from ..config import FLAT_NETWORK_KEYS, TrainConfig, config_to_dict

    # a backbone setting a config leaves out is at its default: the older configs' flat defaults
    # (today's sd3 / sd15 / sd3-druid defaults are the same values)
    network = {f"model.network.{key}": value for key, value in FLAT_NETWORK_KEYS.items()}
    return network | flatten(config_to_dict(TrainConfig()))


def load_runs(paths: Sequence[str | Path], labels: dict[Path, str] | None = None) -> list[Run]:
    """Runs in the order given (duplicates dropped); ``labels`` maps resolved run paths to --name.
    Row names that would repeat get the folder's path appended."""
    if not paths:
        raise ReportError("no run folders given")
    labels = labels or {}
    runs, seen = [], set()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved not in seen:
            seen.add(resolved)
            runs.append(load_run(path, labels.get(resolved)))
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} ({run.path})"
    return runs


# ----------------------------------------------------------------------------- variants


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def unread_keys(config: dict) -> set[str]:
    """Keys the run never read: without RL (``rl.algorithm: none``) every other ``rl.*`` setting,
    so that a row-2 run made before a preset's RL settings changed is still a seed of row 2."""
    if config.get("rl.algorithm", "none") != "none":
        return set()
    return {k for k in config if k.startswith("rl.") and k != "rl.algorithm"}


def config_key(config: dict, ignore: Sequence[str] = ()) -> tuple:
    """A flat config without IGNORED_KEYS, the keys it never read and ``ignore``, hashable: equal
    for the seeds of a variant."""
    skip = IGNORED_KEYS | unread_keys(config) | set(ignore)
    return tuple(sorted((k, format_value(v)) for k, v in config.items() if k not in skip))


def varying_keys(configs: Sequence[dict]) -> list[str]:
    """Config keys (minus IGNORED_KEYS) whose value is not the same in all ``configs``."""
    keys = sorted({k for c in configs for k in c if k not in IGNORED_KEYS})
    return [k for k in keys if len({format_value(c.get(k, ABSENT)) for c in configs}) > 1]


def _lambda_applies(key: str, config: dict) -> bool:
    """lambda_dis weighs L_dis, which needs the IDM; lambda_rl weighs the RL (or SFT) loss."""
    if key == "lambda_dis":
        return config.get("model.use_idm", True) is not False
    return config.get("rl.algorithm", "none") != "none"


def variant_names(configs: Sequence[dict]) -> list[str]:
    """Names from the config: IDM on/off and the RL algorithm always, lambda values where they
    vary and apply, then the other keys that tell apart variants which would share a name."""
    varying = varying_keys(configs)
    names, shown = [], []
    for config in configs:
        parts = []
        if "model.use_idm" in config:
            parts.append("IDM" if config["model.use_idm"] else "no IDM")
        if "rl.algorithm" in config:
            parts.append(ALGORITHM_NAMES.get(config["rl.algorithm"], str(config["rl.algorithm"])))
        lambdas = [k for k in LAMBDA_LABELS if k in varying and k in config and _lambda_applies(k, config)]
        parts += [f"{LAMBDA_LABELS[k]}={format_value(config[k])}" for k in lambdas]
        names.append(", ".join(parts) or "run")
        shown.append({"model.use_idm", "rl.algorithm", *lambdas})
    for name in dict.fromkeys(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        in_name = set.intersection(*(shown[i] for i in same))
        keys = [k for k in varying_keys([configs[i] for i in same]) if k not in in_name]
        for number, i in enumerate(same, start=1):
            if len(keys) <= MAX_NAME_KEYS:
                extra = ", ".join(f"{k}={format_value(configs[i].get(k, ABSENT))}" for k in keys)
            else:
                extra = f"#{number}"
            names[i] = f"{name} ({extra})"
    return names


def group_runs(runs: Sequence[Run]) -> list[Variant]:
    """Table 3's rows: runs with the same config up to IGNORED_KEYS, in order of first appearance.
    A row is named by its runs' common --name, else from its config. Seeds of one variant must
    have been evaluated with the same settings (up to the seed), or their mean means nothing."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant_key, []).append(run)
    members = list(groups.values())
    derived = variant_names([group[0].config for group in members])
    variants = []
    for group, name in zip(members, derived, strict=True):
        labels = {run.label for run in group}
        if len(labels) == 1 and None not in labels:
            name = labels.pop()
        _check_eval_settings(group)
        variants.append(Variant(name, group))
    by_name: dict[str, Variant] = {}
    for variant in variants:
        if variant.name in by_name:
            other = by_name[variant.name]
            keys = varying_keys([other.runs[0].config, variant.runs[0].config])
            raise ReportError(
                f"name '{variant.name}' is given to runs of different variants ({other.runs[0].path} and "
                f"{variant.runs[0].path} differ in {', '.join(keys)}); give them different names"
            )
        by_name[variant.name] = variant
    return variants


def _check_eval_settings(group: Sequence[Run]) -> None:
    first = group[0]
    for run in group[1:]:
        for benchmark in set(first.evals) & set(run.evals):
            a, b = (eval_settings(r.evals[benchmark].metrics) for r in (first, run))
            keys = sorted(
                k for k in set(a) | set(b) if k not in IGNORED_EVAL_SETTINGS and a.get(k) != b.get(k)
            )
            if keys:
                raise ReportError(
                    f"{first.evals[benchmark].path} and {run.evals[benchmark].path}: seeds of one variant "
                    f"evaluated with different settings ({', '.join(keys)}); evaluate them alike"
                )
