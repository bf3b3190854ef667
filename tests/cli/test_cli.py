import dataclasses
import json

import pytest
import yaml
from PIL import Image

from idruid.cli import main
from idruid.config import load_config
from idruid.train import train

LAYOUT = {
    "prompt": "a photo of a red circle and a blue square",
    "instances": [
        {"caption": "a red circle", "box": [0.1, 0.1, 0.45, 0.45]},
        {"caption": "a blue square", "box": [0.55, 0.5, 0.9, 0.9]},
    ],
    "seed": 3,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return train(load_config("tiny", ["steps=1"]), run, progress=False)


def test_generate_one_and_many(tmp_path, tiny_checkpoint, capsys):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(LAYOUT))
    out = tmp_path / "image.png"
    assert (
        main(["generate", str(one), "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--steps", "2"])
        == 0
    )
    assert Image.open(out).size == (32, 32)
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps(LAYOUT) for _ in range(3)))
    folder = tmp_path / "images"
    assert (
        main(
            [
                "generate",
                str(many),
                "--out",
                str(folder),
                "--checkpoint",
                str(tiny_checkpoint),
                "--steps",
                "1",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]


def test_eval_writes_metrics_table_and_grid(tmp_path, tiny_checkpoint):
    out = tmp_path / "eval"
    args = ["eval", "--benchmark", "shapes-mig", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    assert main([*args, "--steps", "2", "--per-level", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mig"]) >= {"L2", "L6", "all", "avg"} and metrics["settings"]["layouts"] == 10
    assert {"spatial", "color", "texture", "shape"} <= set(metrics["sam"]["all"])
    assert 0.0 <= metrics["leakage"]["rate"] <= 1.0
    assert (out / "table.md").read_text().count("|") > 10 and (out / "grid.png").is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "x", ', "malformed JSON"),
        (
            json.dumps({**LAYOUT, "instances": [{"caption": "a", "box": [0.5, 0.1, 0.2, 0.3]}]}),
            "instances[0].box: x1 must be greater than x0",
        ),
        (
            json.dumps({**LAYOUT, "instances": [{"caption": "a", "box": [0.1, 0.1, 1.5, 0.3]}]}),
            "instances[0].box: x1=1.5 is outside [0, 1]",
        ),
        (
            json.dumps({**LAYOUT, "instances": [{"caption": "", "box": [0.1, 0.1, 0.5, 0.3]}]}),
            "instances[0].caption: missing or empty",
        ),
        (json.dumps({**LAYOUT, "instances": [LAYOUT["instances"][0]] * 11}), "at most 10 are allowed"),
        (json.dumps({**LAYOUT, "colour": "red"}), "colour: unknown key"),
    ],
)
def test_bad_layouts_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["generate", str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("idruid: error:") and message in err and "\n" not in err and "Traceback" not in err


def test_bad_checkpoint_exits_2(tmp_path, capsys):
    path = tmp_path / "l.json"
    path.write_text(json.dumps(LAYOUT))
    assert (
        main(
            ["generate", str(path), "--out", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "nope")]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "shapes-sam", "--checkpoint", str(tmp_path)]) == 2
    assert "not an idruid checkpoint" in capsys.readouterr().err


def test_unknown_config_exits_2(capsys):
    assert main(["train", "--config", "nope"]) == 2
    assert "no such file or preset" in capsys.readouterr().err


def test_backbone_flag_picks_the_preset_and_must_agree_with_the_config(tmp_path, capsys, one_thread):
    assert main(["train", "--backbone", "sd15", "--config", "tiny"]) == 2
    assert "--backbone sd15, but config 'tiny' builds model.backbone=sd3" in capsys.readouterr().err
    run = tmp_path / "unet"
    overrides = ["steps=1", "batch_size=2", "warmup_steps=1"]
    assert main(["train", "--backbone", "sd15", "--out", str(run), *overrides]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["backbone"] == "sd15" and config["model"]["codec"] == "unshuffle"  # shapes-sd15


def test_demo_trains_evaluates_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--config", "tiny", "--out", str(out), "--per-level", "1", "steps=1"]) == 0
    report = (out / "report.md").read_text()
    assert "## shapes-sam" in report and "## shapes-mig" in report and "ground-truth renders" in report
    for name in ("loss.png", "isr-shapes-mig.png", "eval-shapes-sam/grid.png", "model/idruid.json"):
        assert (out / name).is_file()


def test_demo_runs_the_rl_stage_and_says_so(tmp_path, capsys):
    """The default demo preset is stage 1 + RL; a tiny run with RL from step 1 of 2 reports it."""
    out = tmp_path / "demo"
    overrides = ["steps=2", "rl.algorithm=ppo", "rl.start_fraction=0.5", "rl.critic_warmup=0"]
    overrides += ["rl.batch_size=2", "rl.group_size=2", "rl.sampling_steps=2", "rl.critic_hidden=16"]
    assert main(["demo", "--config", "tiny", "--out", str(out), "--per-level", "1", *overrides]) == 0
    assert "stage 1 + PPO (group baseline) from step 1 of 2" in (out / "report.md").read_text()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["l_rl"] is None and log[1]["rl_reward"] is not None


def test_default_demo_preset_is_the_full_method():
    """`idruid demo` trains shapes-full: the `shapes` stage-1 recipe, then PPO for the last steps."""
    full, stage1 = load_config("shapes-full"), load_config("shapes")
    assert full.rl.algorithm == "ppo" and int(full.rl.start_fraction * full.steps) == stage1.steps
    assert full.model == stage1.model and full.learning_rate == stage1.learning_rate
    # the RL stage is the one Table 3 measures (`shapes-rl`), joining at step 1700 instead of 0
    assert dataclasses.replace(full.rl, start_fraction=0.0) == load_config("shapes-rl").rl


def test_embedded_default_model_generates(tmp_path):
    """Without --checkpoint, generate uses the shipped model; its sampling settings come along."""
    path = tmp_path / "l.json"
    path.write_text(json.dumps(LAYOUT))
    out = tmp_path / "default.png"
    assert main(["generate", str(path), "--out", str(out), "--steps", "2"]) == 0
    assert Image.open(out).size == (32, 32)
