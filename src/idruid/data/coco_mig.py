"""COCO-MIG benchmark files (MIGC's ``bench_file/``): reader and writer.

``mig_bench.txt`` lists the 800 global prompts; ``mig_bench_anno.yaml`` maps each prompt
to ``{phrase: [box, ...], "coco_id": "<index>"}`` with normalised ``[x0, y0, x1, y1]``
boxes. A phrase maps to a LIST of boxes because the same phrase can occur several times
in one prompt ("... a red carrot and a red carrot"); each box is one instance. The level
of a prompt is its number of instances (160 prompts at each of L2..L6, paper 4.1).

Instances keep the file's order (phrases as listed, boxes in list order), the order in
which MIGC's own benchmark script feeds them to its pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from idruid.errors import LayoutError
from idruid.layout import MAX_INSTANCES, Instance, Layout, validate_box
from idruid.textfile import read_text

PROMPTS_FILE = "mig_bench.txt"
ANNOTATION_FILE = "mig_bench_anno.yaml"
ID_KEY = "coco_id"


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe YAML loader that refuses a key given twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise LayoutError(f"{mark.name}: line {mark.line + 1}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_annotation(path: str | Path) -> dict:
    """The raw YAML mapping ``prompt -> {phrase: [boxes], coco_id}``, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: COCO-MIG annotation file not found")
    try:
        data = yaml.load(read_text(path, LayoutError), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise LayoutError(f"{path}: malformed YAML ({err})") from None
    if not isinstance(data, dict) or not data:
        raise LayoutError(f"{path}: must be a non-empty mapping from prompt to its phrases and boxes")
    return data


def _index(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise LayoutError(
            f"{where}.{ID_KEY}: must be a non-negative integer (the benchmark index), got {value!r}"
        )
    return int(value)


def layout_from_entry(prompt, entry, where: str) -> Layout:
    """One annotation entry -> Layout with ``meta = {"index", "level"}``; errors name the prompt."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise LayoutError(f"{where}: the prompt (mapping key) must be a non-empty string, got {prompt!r}")
    if not isinstance(entry, dict):
        raise LayoutError(f"{where}: must map phrases to box lists, got {type(entry).__name__}")
    if ID_KEY not in entry:
        raise LayoutError(f"{where}.{ID_KEY}: missing")
    index = _index(entry[ID_KEY], where)
    here = f"{where} (index {index})"
    instances = []
    for phrase, boxes in entry.items():
        if phrase == ID_KEY:
            continue
        if not isinstance(phrase, str) or not phrase.strip():
            raise LayoutError(f"{here}: phrase {phrase!r} must be a non-empty string")
        if not isinstance(boxes, list) or not boxes:
            raise LayoutError(f"{here}.{phrase!r}: must be a non-empty list of boxes [x0, y0, x1, y1]")
        for k, box in enumerate(boxes):
            instances.append(Instance(phrase.strip(), validate_box(box, f"{here}.{phrase!r}[{k}]")))
    if not instances:
        raise LayoutError(f"{here}: no phrase with boxes")
    if len(instances) > MAX_INSTANCES:
        raise LayoutError(f"{here}: {len(instances)} instances, at most {MAX_INSTANCES} are allowed")
    return Layout(prompt.strip(), tuple(instances), meta={"index": index, "level": len(instances)})


def _check_unique_indices(layouts: Sequence[Layout], source: str) -> None:
    first: dict[int, str] = {}
    for layout in layouts:
        index = layout.meta["index"]
        if index in first:
            raise LayoutError(
                f"{source}: {ID_KEY} {index} is used by both {first[index]!r} and {layout.prompt!r}"
            )
        first[index] = layout.prompt


def read_coco_mig_annotation(path: str | Path) -> list[Layout]:
    """Layouts from the YAML alone, ordered by benchmark index (``coco_id``)."""
    data = load_annotation(path)
    layouts = [layout_from_entry(prompt, entry, f"{path}: {prompt!r}") for prompt, entry in data.items()]
    _check_unique_indices(layouts, str(path))
    return sorted(layouts, key=lambda layout: layout.meta["index"])


def read_prompts(path: str | Path) -> list[str]:
    """The prompt list, one per line (blank lines skipped); a repeated prompt is an error."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: COCO-MIG prompt list not found")
    prompts: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text(path, LayoutError).splitlines(), start=1):
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in seen:
            raise LayoutError(f"{path}: line {number}: prompt repeats line {seen[prompt]}: {prompt!r}")
        seen[prompt] = number
        prompts.append(prompt)
    if not prompts:
        raise LayoutError(f"{path}: no prompt")
    return prompts


def read_coco_mig(bench_dir: str | Path) -> list[Layout]:
    """The benchmark in ``bench_dir`` (``mig_bench.txt`` + ``mig_bench_anno.yaml``), by index.

    Every listed prompt must have an annotation; annotations of unlisted prompts are not
    read, as in MIGC's benchmark script.
    """
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise LayoutError(f"{bench_dir}: COCO-MIG folder not found")
    prompts_path, annotation_path = bench_dir / PROMPTS_FILE, bench_dir / ANNOTATION_FILE
    prompts = read_prompts(prompts_path)
    data = load_annotation(annotation_path)
    stripped = {str(key).strip(): key for key in data}
    layouts = []
    for number, prompt in enumerate(prompts, start=1):
        if prompt not in stripped:
            raise LayoutError(
                f"{prompts_path}: line {number}: prompt {prompt!r} has no annotation in {annotation_path}"
            )
        key = stripped[prompt]
        layouts.append(layout_from_entry(key, data[key], f"{annotation_path}: {prompt!r}"))
    _check_unique_indices(layouts, str(annotation_path))
    return sorted(layouts, key=lambda layout: layout.meta["index"])


# ----------------------------------------------------------------------------- writing


def _indices(layouts: Sequence[Layout]) -> list[int]:
    """The layouts' own benchmark indices when all have distinct ones, else their positions."""
    own = [layout.meta.get("index") for layout in layouts]
    usable = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in own)
    return own if usable and len(set(own)) == len(own) else list(range(len(layouts)))


def coco_mig_annotation(layouts: Iterable[Layout]) -> dict:
    """The YAML structure: instances grouped by caption in order of first appearance.

    Equal captions become one phrase with several boxes, so a layout whose equal captions
    are not adjacent comes back with them grouped; the seed is not part of the format.
    """
    layouts = list(layouts)
    out: dict = {}
    for layout, index in zip(layouts, _indices(layouts), strict=True):
        if layout.prompt in out:
            raise LayoutError(
                f"layout {index}: prompt {layout.prompt!r} appears twice; COCO-MIG keys entries by prompt"
            )
        entry: dict = {}
        for inst in layout.instances:
            entry.setdefault(inst.caption, []).append([float(v) for v in inst.box])
        if ID_KEY in entry:
            raise LayoutError(f"layout {index}: the caption {ID_KEY!r} is reserved by the format")
        entry[ID_KEY] = str(index)
        out[layout.prompt] = entry
    return out


def write_coco_mig_annotation(layouts: Iterable[Layout], path: str | Path) -> None:
    """Write ``mig_bench_anno.yaml``-style YAML (block style, in the layouts' order)."""
    text = yaml.dump(
        coco_mig_annotation(layouts),
        Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10**6,
    )
    Path(path).write_text(text, encoding="utf-8")


def write_coco_mig(layouts: Iterable[Layout], bench_dir: str | Path) -> None:
    """Write ``mig_bench.txt`` and ``mig_bench_anno.yaml`` into ``bench_dir``."""
    layouts = list(layouts)
    for k, layout in enumerate(layouts):
        if "\n" in layout.prompt:
            raise LayoutError(f"layout {k}: prompt holds a line break; mig_bench.txt has one prompt a line")
    bench_dir = Path(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    write_coco_mig_annotation(layouts, bench_dir / ANNOTATION_FILE)
    (bench_dir / PROMPTS_FILE).write_text(
        "".join(f"{layout.prompt}\n" for layout in layouts), encoding="utf-8"
    )
