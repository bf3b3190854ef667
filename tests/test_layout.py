import json

import pytest

from idruid.layout import (
    MAX_INSTANCES,
    Layout,
    LayoutError,
    boxes_tensor,
    layout_from_dict,
    load_layouts,
    parse_layouts,
    save_layouts,
)


def _layout(n=2, **extra):
    obj = {
        "prompt": "a photo of shapes",
        "instances": [{"caption": f"a red circle {k}", "box": [0.1, 0.1, 0.4, 0.5]} for k in range(n)],
    }
    obj.update(extra)
    return obj


def test_valid_layout_round_trip(tmp_path):
    layout = layout_from_dict(_layout(3, seed=7))
    assert layout.level == 3 and layout.seed == 7
    assert layout.boxes[0] == (0.1, 0.1, 0.4, 0.5)
    path = tmp_path / "l.jsonl"
    save_layouts([layout, layout], path)
    assert load_layouts(path) == [layout, layout]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda o: o["instances"][1].update(box=[0.5, 0.1, 0.4, 0.3]),
            "instances[1].box: x1 must be greater than x0",
        ),
        (
            lambda o: o["instances"][0].update(box=[0.1, 0.5, 0.4, 0.5]),
            "instances[0].box: y1 must be greater than y0",
        ),
        (
            lambda o: o["instances"][0].update(box=[0.1, 0.1, 1.2, 0.5]),
            "instances[0].box: x1=1.2 is outside [0, 1]",
        ),
        (
            lambda o: o["instances"][0].update(box=[-0.1, 0.1, 0.2, 0.5]),
            "instances[0].box: x0=-0.1 is outside [0, 1]",
        ),
        (
            lambda o: o["instances"][0].update(box=[0.1, 0.1, 0.2]),
            "instances[0].box: must be a list of 4 numbers",
        ),
        (
            lambda o: o["instances"][0].update(box=[0.1, "a", 0.2, 0.3]),
            "instances[0].box[1]: must be a number",
        ),
        (lambda o: o["instances"][1].update(caption=""), "instances[1].caption: missing or empty"),
        (lambda o: o["instances"][1].pop("caption"), "instances[1].caption: missing or empty"),
        (lambda o: o["instances"][0].pop("box"), "instances[0].box: missing"),
        (lambda o: o["instances"][0].update(colour="red"), "instances[0].colour: unknown key"),
        (lambda o: o.update(extra=1), "extra: unknown key"),
        (lambda o: o.update(prompt="  "), "prompt: missing or empty"),
        (lambda o: o.update(instances=[]), "instances: must hold at least 1 instance"),
        (lambda o: o.update(seed=-3), "seed: must be a non-negative integer"),
    ],
)
def test_bad_layouts_name_the_field(mutate, message):
    obj = _layout(2)
    mutate(obj)
    with pytest.raises(LayoutError) as err:
        layout_from_dict(obj)
    assert message in str(err.value)


def test_more_than_ten_instances_is_refused():
    with pytest.raises(LayoutError, match="has 11 instances, at most 10"):
        layout_from_dict(_layout(MAX_INSTANCES + 1))
    assert layout_from_dict(_layout(MAX_INSTANCES)).level == 10


def test_file_formats_object_list_and_jsonl():
    one = json.dumps(_layout(1))
    assert len(parse_layouts(one)) == 1
    assert len(parse_layouts(json.dumps([_layout(1), _layout(2)]))) == 2
    assert len(parse_layouts(one + "\n\n" + json.dumps(_layout(3)) + "\n")) == 2


def test_malformed_json_and_errors_carry_position():
    with pytest.raises(LayoutError, match="malformed JSON"):
        parse_layouts('{"prompt": "x", ')
    with pytest.raises(LayoutError, match="line 2: malformed JSON"):
        parse_layouts(json.dumps(_layout(1)) + "\n{oops\n")
    bad = _layout(1)
    bad["instances"][0]["box"] = [0.5, 0.5, 0.5, 0.9]
    with pytest.raises(LayoutError, match=r"\[1\]\.instances\[0\]\.box: x1 must be greater"):
        parse_layouts(json.dumps([_layout(1), bad]))
    with pytest.raises(LayoutError, match="layout file not found"):
        load_layouts("/nonexistent/layout.json")


def test_boxes_tensor_pads_and_masks():
    layouts = [layout_from_dict(_layout(2)), layout_from_dict(_layout(1))]
    boxes, valid = boxes_tensor(layouts)
    assert boxes.shape == (2, 10, 4) and valid.tolist()[0][:3] == [True, True, False]
    assert valid.sum().item() == 3 and boxes[1, 1:].abs().sum() == 0


def test_layout_to_dict_is_valid_input():
    layout = Layout("p", tuple(layout_from_dict(_layout(2)).instances), seed=3)
    assert layout_from_dict(layout.to_dict()) == layout
