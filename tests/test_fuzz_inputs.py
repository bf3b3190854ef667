"""Fuzzing (hypothesis, fixed seed, bounded examples): the layout parser, every converter's
reader and the UI payload parser take arbitrary JSON, YAML and bytes and either accept them or
raise idruid's own error with a message; never any other exception."""

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from idruid.convert import FORMATS, ConvertOptions, read_layouts
from idruid.layout import Layout, LayoutError, layout_from_dict, parse_layouts
from idruid.ui.payload import GenerateRequest, PayloadError, parse_generate_request

FUZZ = settings(
    derandomize=True,  # the same examples on every run and in CI
    max_examples=60,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found: no minutes of shrinking
    suppress_health_check=[HealthCheck.too_slow],
)
# keys the readers look for, so that examples get past the first check more often than random text
KEYS = (
    "prompt instances caption box seed phrases locations prompt_list bboxes width height annos bbox "
    "mask category_name global_caption detail_region_captions region_captions bbox_info image_path "
    "coco_id layout steps cfg"
).split()
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
numbers = st.integers(-3, 1100) | st.floats(-2.0, 1100.0) | st.sampled_from([float("nan"), float("inf")])
json_values = st.recursive(
    scalars | numbers,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)
# shaped like a layout: right keys, values of any type (most often the right one)
boxes = st.lists(numbers, min_size=0, max_size=5) | json_values
instance = st.fixed_dictionaries(
    {}, optional={"caption": st.text(max_size=10) | json_values, "box": boxes, "bbox": boxes}
)
layout_like = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=20) | json_values,
        "instances": st.lists(instance, max_size=12) | json_values,
        "seed": st.integers(-(2**70), 2**70) | json_values,
    },
)
corner, side = st.floats(0.0, 0.8), st.floats(0.01, 0.2)
valid_box = st.tuples(corner, corner, side, side).map(lambda v: [v[0], v[1], v[0] + v[2], v[1] + v[3]])
words = st.from_regex(r"[a-z][a-z ]{0,10}[a-z]", fullmatch=True)
valid_layout = st.fixed_dictionaries(  # mostly valid: gets past the first checks to the deep ones
    {
        "prompt": words,
        "instances": st.lists(
            st.fixed_dictionaries({"caption": words, "box": valid_box}),
            min_size=1,
            max_size=11,
        ),
    },
    optional={"seed": st.integers(0, 2**32 - 1)},
)
documents = valid_layout | layout_like | json_values


def _own_error(call, errors):
    """Run ``call``; an idruid error must carry a message, anything else fails the test."""
    try:
        return call()
    except errors as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return None


@FUZZ
@given(documents)
def test_layout_from_dict_accepts_or_raises_layout_error(obj):
    layout = _own_error(lambda: layout_from_dict(obj), LayoutError)
    assert layout is None or isinstance(layout, Layout)


@FUZZ
@given(st.text(max_size=200) | st.lists(documents, max_size=4).map(lambda d: "\n".join(map(json.dumps, d))))
def test_parse_layouts_accepts_or_raises_layout_error(text):
    layouts = _own_error(lambda: parse_layouts(text, "<fuzz>"), LayoutError)
    assert layouts is None or all(isinstance(layout, Layout) for layout in layouts)


def _mutate(obj, data):
    """``obj`` with one value somewhere inside replaced by arbitrary JSON (or left whole)."""
    if isinstance(obj, dict) and obj and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(obj)))
        return {**obj, key: _mutate(obj[key], data)}
    if isinstance(obj, list) and obj and data.draw(st.booleans()):
        k = data.draw(st.integers(0, len(obj) - 1))
        return [*obj[:k], _mutate(obj[k], data), *obj[k + 1 :]]
    return data.draw(json_values)


def _valid_file(name: str, path: Path, layouts: list[Layout]) -> None:
    """``layouts`` written in format ``name`` by idruid's own writer (parquet from its rows)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = path.with_suffix(".rows")
        FORMATS[name].write(layouts, rows, ConvertOptions())
        records = [json.loads(line) for line in rows.read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(records), path)
        return
    FORMATS[name].write(layouts, path, ConvertOptions())


def _fuzzed_file(data, name: str, path: Path) -> None:
    """A valid file of format ``name`` as idruid writes it, then kept, one JSON value replaced,
    truncated, one byte changed, or replaced by arbitrary bytes or JSON."""
    objs = data.draw(st.lists(valid_layout, min_size=1, max_size=3, unique_by=lambda obj: obj["prompt"]))
    layouts = [layout_from_dict({**obj, "instances": obj["instances"][:10]}) for obj in objs]
    _valid_file(name, path, layouts)
    if path.is_dir():  # coco-mig: a folder; fuzz its annotation file
        path = path / "mig_bench_anno.yaml"
    content = path.read_bytes()
    how = data.draw(st.sampled_from(["keep", "value", "truncate", "flip", "bytes", "json"]))
    if how == "value" and path.suffix in (".jsonl", ".yaml"):
        if path.suffix == ".yaml":
            content = yaml.safe_dump(_mutate(yaml.safe_load(content), data)).encode()
        else:
            records = [json.loads(line) for line in content.splitlines()]
            k = data.draw(st.integers(0, len(records) - 1))
            records[k] = _mutate(records[k], data)
            content = "\n".join(json.dumps(r) for r in records).encode()
    elif how == "truncate":
        content = content[: data.draw(st.integers(0, len(content)))]
    elif how == "flip" and content:
        k = data.draw(st.integers(0, len(content) - 1))
        content = content[:k] + bytes([content[k] ^ data.draw(st.integers(1, 255))]) + content[k + 1 :]
    elif how == "bytes":
        content = data.draw(st.binary(max_size=300))
    elif how == "json":
        content = json.dumps(data.draw(documents)).encode()
    path.write_bytes(content)


READ_CASES = [(name, ".jsonl") for name in FORMATS if name != "coco-mig"]
READ_CASES += [("coco-mig", ".yaml"), ("layoutsam", ".parquet")]


@pytest.mark.parametrize(("name", "suffix"), READ_CASES)
def test_every_reader_accepts_or_raises_layout_error(name, suffix):
    folder = Path(tempfile.mkdtemp(prefix="idruid-fuzz-"))
    accepted = []

    @settings(FUZZ, max_examples=30)
    @given(st.data(), st.booleans())
    def check(data, clip: bool):
        path = folder / f"input{suffix}"
        _fuzzed_file(data, name, path)
        layouts = _own_error(lambda: read_layouts(path, name, ConvertOptions(clip=clip)), LayoutError)
        assert layouts is None or all(isinstance(layout, Layout) for layout in layouts)
        accepted.append(layouts is not None)

    check()
    assert any(accepted) and not all(accepted)  # the examples reached both outcomes


def test_the_coco_mig_folder_reader_accepts_or_raises_layout_error():
    folder = Path(tempfile.mkdtemp(prefix="idruid-fuzz-")) / "bench"
    accepted = []

    @settings(FUZZ, max_examples=25)
    @given(st.data())
    def check(data):
        _fuzzed_file(data, "coco-mig", folder)  # mig_bench.txt + a fuzzed mig_bench_anno.yaml
        accepted.append(_own_error(lambda: read_layouts(folder, "coco-mig"), LayoutError) is not None)

    check()
    assert any(accepted) and not all(accepted)


payloads = (
    documents
    | st.fixed_dictionaries(
        {"layout": valid_layout, "steps": st.integers(0, 210), "cfg": st.floats(-1.0, 35.0)}
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "layout": layout_like | json_values,
            "steps": numbers | json_values,
            "cfg": numbers | json_values,
        },
    )
)


@FUZZ
@given(payloads)
def test_ui_payload_parser_accepts_or_raises_payload_error(payload):
    request = _own_error(lambda: parse_generate_request(payload), PayloadError)
    assert request is None or isinstance(request, GenerateRequest)
