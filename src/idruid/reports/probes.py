"""RL probe folders as a report reads them (their table is tables.probe_table, their plot
figures.plot_probes).

A probe folder holds ``probe.jsonl`` (one record per checkpoint), ``probe.json`` (iterations,
learning rate, checkpoint) and ``config.yaml``. The table lists, per probe, the settings that
differ between the probes given, the held-out reward at every checkpoint, its gain over the
start and the seconds per iteration; so one estimator can be compared with another at the same
number of iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ReportError
from .runs import _read_json, current_keys, flatten, read_log


@dataclass
class Probe:
    path: Path
    name: str
    config: dict  # flattened config.yaml, with the probe's own settings as "probe.*"
    records: list[dict]

    @property
    def seconds_per_iteration(self) -> float | None:
        last = self.records[-1]
        return last["seconds"] / last["iteration"] if last.get("iteration") else None


def is_probe(path: str | Path) -> bool:
    return (Path(path) / "probe.jsonl").is_file()


def load_probe(path: str | Path, name: str | None = None) -> Probe:
    path = Path(path)
    records = read_log(path / "probe.jsonl")
    if not records or any("held_out_reward" not in r or "iteration" not in r for r in records):
        raise ReportError(f"{path / 'probe.jsonl'}: no held-out reward records (an interrupted probe?)")
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{path}: probe.jsonl without config.yaml")
    try:
        config = flatten(current_keys(yaml.safe_load(config_path.read_text()) or {}, config_path))
    except yaml.YAMLError as err:
        raise ReportError(f"{config_path}: malformed YAML ({err})") from None
    settings = _read_json(path / "probe.json") if (path / "probe.json").is_file() else {}
    config.update({f"probe.{k}": v for k, v in settings.items()})
    return Probe(path, name or path.name, config, records)
