"""RL probes in a report: the held-out reward of ``idruid rl-probe`` folders, a table and a plot.

A probe folder holds ``probe.jsonl`` (one record per checkpoint), ``probe.json`` (iterations,
learning rate, checkpoint) and ``config.yaml``. The table lists, per probe, the settings that
differ between the probes given, the held-out reward at every checkpoint, its gain over the
start and the seconds per iteration; so one estimator can be compared with another at the same
number of iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ReportError
from .runs import _read_json, current_keys, flatten, format_value, read_log, varying_keys


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


# optional columns: (record key, header, how its first and last values are shown)
_END_COLUMNS = (
    ("held_out_off_reward", "off gain", lambda first, last: f"{last - first:+.3f}"),
    ("held_out_leakage", "leak %", lambda first, last: f"{100 * first:.2f} -> {100 * last:.2f}"),
    ("held_out_off_leakage", "off leak %", lambda first, last: f"{100 * first:.2f} -> {100 * last:.2f}"),
)


def probe_table(probes: Sequence[Probe]) -> str:
    """Markdown: one row per probe, the held-out reward at each checkpoint iteration and its gain,
    and where the probes measured them, the gain on the off geometry and both leakage rates from
    the first record to the last."""
    iterations = sorted({r["iteration"] for p in probes for r in p.records})
    configs = [p.config for p in probes]
    # keys that differ where they are set (a key only older configs lack is no difference)
    keys = [
        k
        for k in varying_keys(configs)
        if k != "seed" and len({format_value(c[k]) for c in configs if k in c}) > 1
    ]
    ends = [column for column in _END_COLUMNS if any(column[0] in r for p in probes for r in p.records)]
    header = ["Probe", *keys, *(f"it {i}" for i in iterations), "gain", *(c[1] for c in ends), "s / it"]
    rule = ["---"] * (1 + len(keys)) + ["---:"] * (len(iterations) + 2 + len(ends))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for probe in probes:
        by_iteration = {r["iteration"]: r["held_out_reward"] for r in probe.records}
        cells = [by_iteration.get(i) for i in iterations]
        gain = probe.records[-1]["held_out_reward"] - probe.records[0]["held_out_reward"]
        per_it = probe.seconds_per_iteration
        row = [
            probe.name,
            *(format_value(probe.config.get(k, "(unset)")) for k in keys),
            *("-" if c is None else f"{c:.3f}" for c in cells),
            f"{gain:+.3f}",
            *(_first_to_last(probe.records, key, show) for key, _, show in ends),
            "-" if per_it is None else f"{per_it:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _first_to_last(records: Sequence[dict], key: str, show) -> str:
    """``show(first, last)`` of a record key, "-" where the probe did not measure it."""
    first, last = records[0].get(key), records[-1].get(key)
    return "-" if first is None or last is None else show(first, last)


def plot_probes(probes: Sequence[Probe], path: Path) -> Path:
    """Held-out reward against the iteration, one line per probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for probe in probes:
        ax.plot(
            [r["iteration"] for r in probe.records],
            [r["held_out_reward"] for r in probe.records],
            "o-",
            label=probe.name,
        )
    ax.set(xlabel="RL iteration (L_rl alone)", ylabel="held-out reward (Eq. 6)", title="RL probes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
