"""The RL stage on two CPU processes through accelerate's launcher (tests/launch_helpers.py): two
processes at ``rl.batch_size=B`` roll out, reward, baseline and train like one process at 2B, each
rank on its own prompts and noise; a run with one rank killed resumes to the same weights.

Run as a script (by the launcher), the file trains the tiny preset (tiny-flux for the flux
variant) with the RL stage from step 0 and records, per iteration and rank, the rollouts'
prompts and rewards, the advantages and the critic's weights (``records/``), beside each rank's
trained weights at every checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from launch_helpers import distance, launch_two, log, train_recording, weights

from idruid.faults import CRASH_ENV
from idruid.rl.stage import RLStage

STEPS = 3
COMMON = [
    f"steps={STEPS}", "threads=1", "checkpoint_every=1", "lambda_dis=0",
    "rl.algorithm=ppo", "rl.start_fraction=0", "rl.every=1", "rl.sampling_steps=4",
]  # fmt: skip
CRITIC = [
    "rl.group_size=2", "rl.baseline=critic", "rl.credit=image", "rl.critic_warmup=0", "rl.critic_gate=0",
    "rl.critic_epochs=2", "rl.ppo_epochs=2", "rl.window=random",
]  # fmt: skip
VARIANTS = {  # name: (overrides, rl.batch_size per process)
    # group baseline over groups of 4 with 6 rollouts a rank, so the middle prompt's group spans
    # both ranks; per-instance credit (instances padded differently on each rank); the held-out
    # reward split over the ranks (3 layouts: 2 on rank 0, 1 on rank 1)
    "group": (["rl.group_size=4", "rl.baseline=group", "rl.credit=instance", "rl.held_out=3"], 6),
    # the critic: fitted from the first iteration on, replaying pool entries; a rollout trained
    # twice (ppo_epochs=2: the second time off-policy); the SDE window drawn at random; the
    # image-level credit of the paper
    "critic": (CRITIC, 4),
    # the paper's literal reading: the actor on rollouts drawn from the action pool (the same
    # entry on every rank), the critic gate holding the actor for the first iteration
    "pool": (["rl.group_size=2", "rl.baseline=critic", "rl.update=pool", "rl.critic_warmup=1"], 4),
    # the group variant on the FLUX.1 backbone (preset tiny-flux): its time grid, packing and
    # processors under the same rank rule
    "flux": (["rl.group_size=4", "rl.baseline=group", "rl.credit=instance"], 6),
}
PRESETS = {"flux": "tiny-flux"}  # the variants not run on the tiny MM-DiT


def _per_process(variant: str) -> list[str]:
    return [*COMMON, *VARIANTS[variant][0], "batch_size=2", f"rl.batch_size={VARIANTS[variant][1]}"]


def _global(variant: str) -> list[str]:
    return [*COMMON, *VARIANTS[variant][0], "batch_size=4", f"rl.batch_size={2 * VARIANTS[variant][1]}"]


# As in tests/test_multiprocess.py: float32 summation order (batches of 4 against 8, all-reduces)
# moves losses by about 1e-7 relative and the weights by a small part of the update; rewards are
# scores of uint8 images and only move if a pixel's rounding flips.
RTOL = 1e-4
WEIGHT_RTOL = 1e-2


@contextlib.contextmanager
def recording_rl(out: Path):
    """Record what each RL iteration computes, per rank, under ``out/records``."""
    folder = out / "records"
    folder.mkdir(parents=True, exist_ok=True)
    sample, advantages, fit = RLStage._sample, RLStage.global_advantages, RLStage._fit_critic

    def save(stage, kind: str, value) -> None:
        torch.save(value, folder / f"{kind}-{stage.iteration}-rank{stage.ranks.rank}.pt")

    def recorded_sample(stage, model, stats):
        fresh = sample(stage, model, stats)
        layouts = [(layout.prompt, [i.box for i in layout.instances]) for layout in fresh.layouts]
        save(stage, "rollouts", {"layouts": layouts, "reward": fresh.reward, "images": fresh.images})
        return fresh

    def recorded_advantages(stage, model, recorded, cond):
        result = advantages(stage, model, recorded, cond)
        save(stage, "advantages", result[0])  # this rank's view of the global batch's
        save(stage, "own-advantages", stage._own_rows(result[0], cond))
        return result

    def recorded_fit(stage, model, fresh, stats):
        fit(stage, model, fresh, stats)
        save(stage, "critic", {k: v.clone() for k, v in stage.critic.state_dict().items()})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RLStage, "_sample", recorded_sample)
        patch.setattr(RLStage, "global_advantages", recorded_advantages)
        patch.setattr(RLStage, "_fit_critic", recorded_fit)
        yield


def _record(run: Path, kind: str, iteration: int, rank: int = 0):
    return torch.load(run / "records" / f"{kind}-{iteration}-rank{rank}.pt", weights_only=False)


def _launch(run: Path, overrides: list[str], root: Path, crash: str | None = None, preset: str = "tiny"):
    return launch_two([__file__, str(run), preset, *overrides], root, {CRASH_ENV: crash} if crash else None)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def runs(request, tmp_path_factory):
    """(variant, two-process run, one-process run at the global batch)."""
    root = tmp_path_factory.mktemp(f"rl-{request.param}")
    two = root / "two"
    preset = PRESETS.get(request.param, "tiny")
    done = _launch(two, _per_process(request.param), root, preset=preset)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    one = root / "one"
    with recording_rl(one):
        train_recording(one, _global(request.param), preset)
    return request.param, two, one


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Rank tensors (K, B, N_r) or (K, B) joined along the batch, instances zero-padded."""
    if parts[0].ndim == 3:
        width = max(p.shape[2] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[2])) for p in parts]
    return torch.cat(parts, dim=1)


def test_ranks_roll_out_their_own_share_of_one_process_batch(runs):
    _, two, one = runs
    for iteration in range(1, STEPS + 1):
        if not (one / "records" / f"rollouts-{iteration}-rank0.pt").exists():
            continue  # ppo_epochs=2: this iteration trained the previous rollouts again
        ranks = [_record(two, "rollouts", iteration, r) for r in (0, 1)]
        single = _record(one, "rollouts", iteration)
        assert ranks[0]["layouts"] + ranks[1]["layouts"] == single["layouts"]  # the rank's rows
        rewards = torch.cat([r["reward"] for r in ranks])
        assert torch.allclose(rewards, single["reward"], rtol=RTOL, atol=1e-5), iteration
        images = [r["images"].flatten(1) for r in ranks]
        assert torch.cdist(*images).min() > 1e-3  # no rank repeats another's rollouts


def test_advantages_are_the_global_batch_ones(runs):
    _, two, one = runs
    trained = [i for i in range(1, STEPS + 1) if (one / "records" / f"advantages-{i}-rank0.pt").exists()]
    assert len(trained) >= STEPS - 1  # every iteration but one the critic gate held
    for iteration in trained:
        single = _record(one, "advantages", iteration)
        assert single.abs().sum() > 0
        for rank in (0, 1):  # every rank sees the global batch's advantages
            seen = _record(two, "advantages", iteration, rank)
            assert torch.allclose(seen, single, rtol=RTOL, atol=1e-4), (iteration, rank)
        # and trains on its own rows of them
        joined = _pad_cat([_record(two, "own-advantages", iteration, r) for r in (0, 1)])
        assert torch.allclose(joined, single[..., : joined.shape[-1]], rtol=RTOL, atol=1e-4), iteration


def test_logged_rl_statistics_and_weights_match_one_process(runs):
    variant, two, one = runs
    log_two, log_one = log(two), log(one)
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == list(range(1, STEPS + 1))
    keys = ["loss", "l_ldm", "l_rl", "rl_reward", "rl_within_var", "rl_l_rl", "rl_kl", "rl_clip_fraction",
            "rl_ratio", "rl_one_sign", "rl_first_step"]  # fmt: skip
    if variant in ("critic", "pool"):
        keys += ["rl_critic_mse", "rl_critic_loss", "rl_actor", "rl_age"]
    if variant == "group":
        keys += ["rl_held_out_reward", "rl_held_out_leakage", "rl_held_out_off_reward"]
    for a, b in zip(log_two, log_one, strict=True):
        for key in keys:
            if key in a or key in b:
                assert a[key] == pytest.approx(b[key], rel=RTOL, abs=1e-6), (a["step"], key)
    if variant == "pool":
        assert log_two[0]["rl_actor"] == 0 and log_two[0]["rl_l_rl"] is None  # the gate held the actor
        assert all(r["rl_l_rl"] is not None for r in log_two[1:])
    else:
        assert all(r["rl_l_rl"] is not None for r in log_two)
    if variant == "critic":
        assert any(r["rl_clip_fraction"] > 0 for r in log_two)  # the reused rollout left the clip
    if variant == "group":
        assert "rl_held_out_reward" in log_two[0]
    first = weights(one, 1, 0)
    for step in range(1, STEPS + 1):
        rank0, rank1 = weights(two, step, 0), weights(two, step, 1)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), step
    update = distance(weights(one, STEPS, 0), first)
    assert update > 1e-3
    assert distance(weights(two, STEPS, 0), weights(one, STEPS, 0)) < WEIGHT_RTOL * update


def test_every_rank_holds_the_critic_of_one_process(runs):
    variant, two, one = runs
    if "rl.baseline=critic" not in VARIANTS[variant][0]:
        pytest.skip("no critic")
    fitted = sorted(int(p.name.split("-")[1]) for p in (two / "records").glob("critic-*-rank0.pt"))
    assert len(fitted) >= 2  # fitted at several iterations
    for iteration in fitted:
        rank0, rank1 = (_record(two, "critic", iteration, r) for r in (0, 1))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), iteration
        single = _record(one, "critic", iteration)
        scale = distance(single, {k: torch.zeros_like(v) for k, v in single.items()})
        assert distance(rank0, single) < 1e-4 * scale, iteration


def test_killed_rank_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    """Rank 0 is killed (SIGKILL) inside step 2's checkpoint write; the launcher stops rank 1; the
    same command resumes both ranks from step 1 (each with its own rollouts and random state)."""
    variant, two, _ = runs
    if variant != "critic":
        pytest.skip("one variant suffices: the critic's holds the most RL state")
    overrides = _per_process(variant)
    run = tmp_path / "run"
    killed = _launch(run, overrides, tmp_path, crash="checkpoint-write:2")
    assert killed.returncode != 0
    assert (run / "checkpoints" / "step-0000002.partial").is_dir()
    assert sorted(p.name for p in (run / "checkpoints" / "step-0000001").glob("rl_rollouts_*")) == [
        "rl_rollouts_0.pt", "rl_rollouts_1.pt"
    ]  # fmt: skip
    done = _launch(run, overrides, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "resuming from" in done.stdout and "at step 1" in done.stdout
    for rank in (0, 1):
        resumed, reference = weights(run, STEPS, rank), weights(two, STEPS, rank)
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), rank


def test_rl_probe_on_two_processes_probes_like_one_at_the_global_batch(tmp_path):
    """``idruid rl-probe`` under accelerate launch: the same records as one process at 2B."""
    from idruid.cli import main
    from idruid.config import load_config
    from idruid.train import train

    checkpoint = train(load_config("tiny", ["steps=1", "threads=1"]), tmp_path / "stage1", progress=False)
    probe = ["rl-probe", "--checkpoint", str(checkpoint), "--config", "tiny", "--iterations", "2"]
    probe += ["--every", "1", "--held-out", "3", "--threads", "1"]
    overrides = ["rl.algorithm=ppo", "rl.sampling_steps=3", "rl.group_size=2"]
    two = ["-m", "idruid.cli", *probe, "--out", str(tmp_path / "two"), *overrides, "rl.batch_size=2"]
    done = launch_two(two, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("wrote ") == 1  # the main process speaks
    assert main([*probe, "--out", str(tmp_path / "one"), *overrides, "rl.batch_size=4"]) == 0
    two, one = (log(tmp_path / name) for name in ("two", "one"))
    assert [r["iteration"] for r in two] == [r["iteration"] for r in one] == [0, 1, 2]
    for a, b in zip(two, one, strict=True):
        for key in ("held_out_reward", "held_out_off_reward", "held_out_leakage", "rl_reward", "rl_l_rl"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=RTOL, abs=1e-6), (a["iteration"], key)


if __name__ == "__main__":  # one rank of a two-process run, started by accelerate launch
    out = Path(sys.argv[1])
    with recording_rl(out):
        train_recording(out, sys.argv[3:], sys.argv[2])
