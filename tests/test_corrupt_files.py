"""Every file idruid reads fails on corruption with exit status 2 and one line naming the file
and the problem, never a traceback; ``--debug`` gives the traceback instead."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from idruid import cli
from idruid.checkpoint import EMBEDDED_CHECKPOINT
from idruid.cli import main
from idruid.config import load_config
from idruid.train import train
from idruid.train_state import write_manifest

LAYOUT = {
    "prompt": "a red circle",
    "instances": [{"caption": "a red circle", "box": [0.1, 0.1, 0.5, 0.5]}],
    "seed": 0,
}
BINARY = bytes(range(256)) * 4  # not UTF-8, not JSON, not an image, not parquet


def one_line_error(capsys, argv: list[str], status: int = 2) -> str:
    """Run the command; it must exit ``status`` with one ``idruid: error:`` line on stderr."""
    assert main(argv) == status
    err = capsys.readouterr().err  # may also hold transformers' "Loading weights" progress bar
    lines = [line for line in err.splitlines() if line.startswith("idruid")]
    assert len(lines) == 1 and lines[0].startswith("idruid: error: "), err
    assert err.rstrip().endswith(lines[0]) and "Traceback" not in err
    return lines[0]


@pytest.fixture
def layout_file(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(LAYOUT))
    return path


@pytest.fixture
def checkpoint_copy(tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(EMBEDDED_CHECKPOINT, copy)
    return copy


def test_a_binary_layout_file(tmp_path, capsys):
    path = tmp_path / "layout.json"
    path.write_bytes(BINARY)
    line = one_line_error(capsys, ["generate", str(path), "--out", str(tmp_path / "x.png")])
    assert f"{path}: not UTF-8 text (byte 128" in line


def test_a_truncated_model_safetensors(tmp_path, capsys, layout_file, checkpoint_copy):
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = [
        "generate",
        str(layout_file),
        "--out",
        str(tmp_path / "x.png"),
        "--checkpoint",
        str(checkpoint_copy),
    ]
    line = one_line_error(capsys, argv)
    assert f"{weights}: unreadable safetensors file" in line
    weights.write_bytes(b"\x08")  # shorter than its own header length
    assert f"{weights}: unreadable safetensors file" in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (BINARY, "idruid.json: not UTF-8 text"),
        (b"[1, 2]", "idruid.json: not a JSON object"),
        (b'{"format": ', "idruid.json: malformed JSON"),
    ],
)
def test_a_corrupt_idruid_json(tmp_path, capsys, layout_file, checkpoint_copy, content, message):
    (checkpoint_copy / "idruid.json").write_bytes(content)
    argv = [
        "generate",
        str(layout_file),
        "--out",
        str(tmp_path / "x.png"),
        "--checkpoint",
        str(checkpoint_copy),
    ]
    assert message in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("content", "message"),
    [(BINARY, "not UTF-8 text"), (b"model: [unclosed\n  steps: 3\n", "malformed YAML")],
)
def test_a_corrupt_config_yaml(tmp_path, capsys, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    line = one_line_error(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert str(path) in line and message in line


def test_a_training_checkpoint_that_cannot_be_resumed(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config("tiny", ["steps=1", "threads=1"]), run, progress=False)
    state = run / "checkpoints" / "step-0000001"
    (state / "optimizer.bin").write_bytes(BINARY)
    write_manifest(state, 1)  # a file the manifest vouches for that still cannot be loaded
    capsys.readouterr()
    line = one_line_error(capsys, ["train", "--config", "tiny", "--out", str(run), "steps=2", "threads=1"])
    assert f"{state}: cannot resume from it" in line and "move it away" in line


@pytest.mark.parametrize(
    ("fmt", "name", "message"),
    [
        ("gligen", "in.json", "not UTF-8 text"),
        ("layoutsam", "in.parquet", "not a readable parquet file"),
        ("coco-mig", "mig_bench_anno.yaml", "not UTF-8 text"),
    ],
)
def test_a_binary_file_for_each_converter(tmp_path, capsys, fmt, name, message):
    path = tmp_path / name
    path.write_bytes(BINARY)
    line = one_line_error(
        capsys, ["convert", "--from", fmt, "--to", "idruid", str(path), str(tmp_path / "out.jsonl")]
    )
    assert str(path) in line and message in line


def test_a_corrupt_image_for_score_and_quality(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "shapes-mig_0.png").write_bytes(BINARY)
    argv = [
        "score",
        "--benchmark",
        "shapes-mig",
        "--images",
        str(images),
        "--limit",
        "1",
        "--out",
        str(tmp_path / "s"),
    ]
    assert f"{images / 'shapes-mig_0.png'}: unreadable image" in one_line_error(capsys, argv)
    line = one_line_error(capsys, ["quality", "--images", str(images)])
    assert f"{images / 'shapes-mig_0.png'}: cannot read the image" in line
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(BINARY)
    (images / "shapes-mig_0.png").unlink()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    line = one_line_error(capsys, ["quality", "--images", str(images), "--prompts", str(prompts)])
    assert f"{prompts}: not UTF-8 text" in line


def test_debug_gives_the_traceback_and_other_failures_still_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "layout.json"
    path.write_bytes(BINARY)
    with pytest.raises(Exception, match="not UTF-8 text"):
        main(["generate", str(path), "--out", str(tmp_path / "x.png"), "--debug"])
    with pytest.raises(Exception, match="not UTF-8 text"):
        main(["--debug", "generate", str(path), "--out", str(tmp_path / "x.png")])

    def broken(args):
        raise RuntimeError("something idruid did not expect\non two lines")

    monkeypatch.setitem(cli.COMMANDS, "generate", broken)
    line = one_line_error(capsys, ["generate", str(path), "--out", "x.png"], status=1)
    assert line == (
        "idruid: error: RuntimeError: something idruid did not expect on two lines "
        "(rerun with --debug for the traceback)"
    )


def test_a_parquet_shard_with_strings_that_are_not_utf8(tmp_path, capsys):
    """Found by the fuzz tests: pyarrow decodes strings only when rows are read."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    not_utf8 = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(b"\0\0\0\0\3\0\0\0"), pa.py_buffer(b"a\x8db")]
    )
    table = pa.table(
        {
            "global_caption": not_utf8,
            "bbox_list": ["[[51.2, 51.2, 256, 256]]"],
            "detail_region_captions": [["c"]],
            "image_path": ["x.png"],
            "width": [512],
            "height": [512],
        }
    )
    shard = tmp_path / "shard.parquet"
    pq.write_table(table, shard)
    argv = ["convert", "--from", "layoutsam", "--to", "idruid", str(shard), str(tmp_path / "out.jsonl")]
    assert f"{shard}: corrupt parquet data" in one_line_error(capsys, argv)
    from idruid.data.layoutsam_train import LayoutSamPairedDataset
    from idruid.layout import LayoutError

    with pytest.raises(LayoutError, match="corrupt parquet data .*Invalid UTF8"):
        LayoutSamPairedDataset(shard, tmp_path, 32)


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("text_encoder/config.json", lambda b: BINARY, "not UTF-8 text"),
        ("text_encoder_2/config.json", lambda b: b[: len(b) // 2], "malformed JSON"),
        ("text_encoder_3/model.safetensors", lambda b: b[: len(b) // 2], "unreadable safetensors file"),
    ],
)
def test_a_corrupt_file_in_a_model_folder(tmp_path, name, damage, message):
    from tiny_models import build_tiny_sd3_folder

    from idruid.model_dirs import ModelFolderError
    from idruid.models.sd3_text import SD3TextEncoder

    root = build_tiny_sd3_folder(tmp_path / "sd3")
    file = root / name
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(ModelFolderError, match=f"{file}: {message}"):
        SD3TextEncoder.from_pretrained(root)
    assert ModelFolderError in cli.USER_ERRORS  # so the command exits 2 with this one line


@pytest.fixture(scope="module")
def base_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per backbone, a tiny diffusers base folder and an idruid checkpoint saved on it."""
    from tiny_models import build_tiny_sd3_folder, build_tiny_sd15_folder

    from idruid.checkpoint import save_checkpoint
    from idruid.config import ModelConfig
    from idruid.models import build_model

    root = tmp_path_factory.mktemp("bases")
    saved = {}
    for backbone, build, length in (
        ("sd3", build_tiny_sd3_folder, 77 + 256),
        ("sd15", build_tiny_sd15_folder, 77),
    ):
        folder = build(root / backbone)
        config = ModelConfig(
            backbone=backbone, base_model=str(folder), text_encoder="base", codec="vae",
            prompt_max_length=length, idm_hidden=16, geometry_rank=8,
        )  # fmt: skip
        saved[backbone] = folder, save_checkpoint(build_model(config), root / f"{backbone}-checkpoint")
    return saved


def halve(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


WEIGHTS = "diffusion_pytorch_model.safetensors"
INCOMPLETE_SD15 = "is not a complete SD1.5 (diffusers layout) folder"


@pytest.mark.parametrize(
    ("backbone", "name", "damage", "message"),
    [
        ("sd3", f"transformer/{WEIGHTS}", halve, f"/transformer/{WEIGHTS}: unreadable safetensors file"),
        ("sd3", f"vae/{WEIGHTS}", halve, f"/vae/{WEIGHTS}: unreadable safetensors file"),
        ("sd3", "vae/config.json", lambda f: f.write_text("{not json"), "/vae/config.json: malformed JSON"),
        ("sd15", f"unet/{WEIGHTS}", halve, f"/unet/{WEIGHTS}: unreadable safetensors file"),
        # a missing file: the backbone's folder check names it before diffusers reads anything
        ("sd15", f"unet/{WEIGHTS}", Path.unlink, f" {INCOMPLETE_SD15}: missing unet/weights"),
    ],
)
def test_a_corrupt_component_of_a_base_folder(
    tmp_path, capsys, layout_file, base_checkpoints, backbone, name, damage, message
):
    folder, checkpoint = base_checkpoints[backbone]
    copy = shutil.copytree(folder, tmp_path / "base")
    damage(copy / name)
    argv = ["generate", str(layout_file), "--out", str(tmp_path / "x.png"), "--checkpoint", str(checkpoint)]
    assert f"{copy}{message}" in one_line_error(capsys, [*argv, "--base", str(copy)])


def test_a_standalone_vae_folder_with_a_malformed_config(tmp_path, base_checkpoints):
    from idruid.model_dirs import ModelFolderError
    from idruid.models.vae import VaeCodec

    vae = shutil.copytree(base_checkpoints["sd3"][0] / "vae", tmp_path / "vae")
    (vae / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="config.json: malformed JSON"):
        VaeCodec.from_pretrained(vae)
