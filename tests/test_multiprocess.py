"""Stage-1 training on two CPU processes through accelerate's own launcher (tests/launch_helpers.py):
two processes at batch B train like one at 2B. Run as a script (by the launcher), the file trains
the tiny preset and saves each rank's trainable weights at every checkpoint.
"""

from __future__ import annotations

import fnmatch
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from launch_helpers import distance, launch_two, log, train_recording, weights

import idruid
import idruid.train as train_module
from idruid.config import PRESET_DIR, TrainConfig, load_config
from idruid.diffusion import FlowProcess
from idruid.losses import sample_sigmas
from idruid.stage1 import paired_draws

STEPS = 3
PER_PROCESS_BATCH = 4
# L_dis off: it is a softplus of batch means, taken per process (see paired_losses), so only the
# flow-matching loss is the same function of the global batch on one process and on two
OVERRIDES = [f"steps={STEPS}", f"batch_size={PER_PROCESS_BATCH}", "threads=1", "lambda_dis=0"]
# Differences between the runs come only from float32 summation order (a batch of 8 against two
# batches of 4 and an all-reduce): about 1e-7 relative in a loss. In the weights they stay near
# 1e-6 of the distance trained, except that Adam's first steps (g / (|g| + eps)) can turn
# rounding in a near-zero gradient entry into up to one step (lr) for that entry; so the weights
# are compared as the norm of their difference over the norm of the training update. A wrong
# data shard or noise repeated across ranks gives a ratio of order 1 and losses off by percents.
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-2


def _initial_weights() -> dict[str, torch.Tensor]:
    """The weights both runs start from (train seeds, then builds the model)."""
    from accelerate.utils import set_seed

    config = load_config("tiny", OVERRIDES)
    set_seed(config.seed)
    return train_module.build_model(config.model).trainable_state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-process run folder, one-process run folder at the same global batch)."""
    root = tmp_path_factory.mktemp("multiprocess")
    two = root / "two"
    done = launch_two([__file__, str(two), *OVERRIDES], root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    one = root / "one"
    train_recording(one, [*OVERRIDES, f"batch_size={2 * PER_PROCESS_BATCH}"])
    return two, one


def test_paired_draws_split_the_global_batch():
    """The rows two ranks keep are the rows one process draws at twice the batch."""
    config = load_config("tiny", ["drop_prompt=0.5", "drop_layout=0.5"])
    x0 = torch.zeros(4, 3, 8, 8)
    torch.manual_seed(7)
    whole = paired_draws(torch.zeros(8, 3, 8, 8), config, FlowProcess())
    parts = []
    for rank in range(2):
        torch.manual_seed(7)  # every rank runs the same seeded stream
        parts.append(paired_draws(x0, config, FlowProcess(), rank=rank, world=2))
    for full, rank0, rank1 in zip(whole, *parts, strict=True):
        assert torch.equal(torch.cat([rank0, rank1]), full)
    assert not torch.equal(parts[0][2], parts[1][2])  # the ranks do not repeat each other's noise
    # one process draws as the trainer always did, so single-process runs are unchanged
    torch.manual_seed(7)
    x0 = torch.zeros(8, 3, 8, 8)
    before = (torch.rand(8) < 0.5, torch.rand(8) < 0.5, torch.randn_like(x0), sample_sigmas(8))
    assert all(torch.equal(a, b) for a, b in zip(before, whole, strict=True))


def test_both_ranks_hold_the_same_weights(runs):
    two, _ = runs
    assert distance(weights(two, 1, 0), weights(two, STEPS, 0)) > 1e-2  # the weights do move
    for step in range(1, STEPS + 1):
        rank0, rank1 = weights(two, step, 0), weights(two, step, 1)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), f"step {step}"


def test_two_processes_train_like_one_at_the_global_batch(runs):
    two, one = runs
    log_two, log_one = log(two), log(one)
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == list(range(1, STEPS + 1))
    for a, b in zip(log_two, log_one, strict=True):
        assert a["l_dis"] is None and b["l_dis"] is None
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), a["step"]
        assert a["l_ldm"] == pytest.approx(b["l_ldm"], rel=LOSS_RTOL), a["step"]
    initial = _initial_weights()
    for step in range(1, STEPS + 1):
        trained_two, trained_one = weights(two, step, 0), weights(one, step, 0)
        update = distance(trained_one, initial)
        assert update > 1e-2
        assert distance(trained_two, trained_one) < WEIGHT_RTOL * update, f"step {step}"
    # the exported EMA model (written by the main process only) agrees too
    from safetensors.torch import load_file

    exported_two, exported_one = (load_file(run / "model" / "model.safetensors") for run in (two, one))
    ema_update = distance(exported_one, initial)
    assert distance(exported_two, exported_one) < WEIGHT_RTOL * ema_update


def test_processes_that_do_not_join_a_group_are_refused(tmp_path, monkeypatch):
    """`accelerate launch --multi_gpu` without GPUs and without ACCELERATE_USE_CPU starts processes
    that each train alone on the same folder; train() stops them before anything is written."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        train_module.train(load_config("tiny"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


# ------------------------------------------------------------------ launch files (configs/accelerate)
LAUNCH_FILES = {  # file: (distributed_type, nodes); every node has 8 GPUs
    "zero2-1node-8gpu.yaml": ("DEEPSPEED", 1),
    "zero2-2nodes-8gpu.yaml": ("DEEPSPEED", 2),
    "fsdp-1node-8gpu.yaml": ("FSDP", 1),
    "fsdp-2nodes-8gpu.yaml": ("FSDP", 2),
}
LAUNCH_DIR = PRESET_DIR / "accelerate"


def test_the_launch_files_are_the_listed_ones_and_ship_with_the_package():
    assert sorted(p.name for p in LAUNCH_DIR.glob("*.yaml")) == sorted(LAUNCH_FILES)
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["idruid"]
    package = Path(idruid.__file__).parent
    for name in LAUNCH_FILES:
        relative = (LAUNCH_DIR / name).relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_file_holds_what_accelerate_reads(name):
    """The keys accelerate's config loader and `accelerate launch` need, with the values of the
    setup the file is named after; unknown keys in the plugin blocks would be dropped silently."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    kind, nodes = LAUNCH_FILES[name]
    path = LAUNCH_DIR / name
    data = yaml.safe_load(path.read_text())
    required = {"compute_environment", "distributed_type", "num_processes", "num_machines", "mixed_precision"}
    assert required <= set(data), required - set(data)
    assert data["compute_environment"] == "LOCAL_MACHINE" and data["distributed_type"] == kind
    assert data["num_machines"] == nodes and data["num_processes"] == 8 * nodes
    assert data["mixed_precision"] == "bf16" and data["use_cpu"] is False
    loaded = load_config_from_file(str(path))  # accelerate's loader: refuses unknown top-level keys
    assert loaded.distributed_type == kind and loaded.num_processes == 8 * nodes

    options = set(vars(launch_command_parser().parse_args(["train.py"])))
    block = data["deepspeed_config" if kind == "DEEPSPEED" else "fsdp_config"]
    assert block and set(block) <= options, set(block) - options
    if kind == "DEEPSPEED":
        assert block["zero_stage"] == 2 and block["gradient_accumulation_steps"] == 1
        assert block["gradient_clipping"] == TrainConfig().grad_clip  # DeepSpeed clips in its own step
    else:
        assert block["fsdp_version"] == 2 and block["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if nodes > 1:  # placeholders that each node's command overrides
        assert data["machine_rank"] == 0 and data["main_process_ip"] == "MAIN_NODE_IP"
        assert isinstance(data["main_process_port"], int)
        if kind == "DEEPSPEED":
            assert block["deepspeed_multinode_launcher"] == "standard"  # one launch command per node
    else:
        assert "main_process_ip" not in data


def _plugin_from_launch_file(path: Path):
    """The FSDP plugin a process started by ``accelerate launch --config_file PATH`` builds: the
    launcher's own environment for the file, read by accelerate's plugin."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", str(path), "x.py"])
    args = _validate_launch_command(parsed)[0]
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if "FSDP" in k}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return FullyShardedDataParallelPlugin()


@pytest.mark.parametrize("name", sorted(n for n in LAUNCH_FILES if LAUNCH_FILES[n][0] == "FSDP"))
def test_fsdp_wraps_the_blocks_that_hold_the_layout_branch_on_every_backbone(name):
    """FSDP's transformer-based wrap, as accelerate prepares it from the launch file, on the MM-DiT,
    UNet and FLUX backbones: it finds blocks to shard (a class the file named that one backbone
    lacks would stop accelerate), and every layout processor sits inside one of them."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from idruid.models.idm import LayoutBranch

    for preset in ("tiny", "tiny-sd15", "tiny-flux"):
        model = train_module.build_model(load_config(preset).model)
        policy = fsdp2_prepare_auto_wrap_policy(_plugin_from_launch_file(LAUNCH_DIR / name), model)
        blocks = [m for m in model.modules() if policy(m)]
        branches = [m for m in model.modules() if isinstance(m, LayoutBranch)]
        assert blocks and branches, preset
        inside = {id(p) for b in blocks for p in b.modules() if isinstance(p, LayoutBranch)}
        assert inside == {id(p) for p in branches}, preset
        assert not any(policy(m) for m in model.adapter.modules())  # the adapter stays in the root unit


if __name__ == "__main__":  # one rank of the two-process run, started by accelerate launch
    train_recording(Path(sys.argv[1]), sys.argv[2:])
