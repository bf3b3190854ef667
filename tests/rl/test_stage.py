"""Rollouts through the sampling loop, PPO's on-policy ratio, the RL stage and its trainer runs."""

import json

import numpy as np
import pytest
import torch

from idruid.config import ConfigError, ModelConfig, RLConfig, load_config
from idruid.data.shapes import prompt_only_layouts
from idruid.models.sd3 import SD3LayoutModel
from idruid.rl.pool import ActionPool
from idruid.rl.rollout import Rollout, policy_log_probs, rl_step_count, rollout, sde_window
from idruid.rl.stage import RLStage, RLStats
from idruid.sampling import SamplingSettings, sample
from idruid.train import EMA, ema_count, train
from idruid.train_log import mean_rl_stats, plot_losses

TINY = ModelConfig(idm_hidden=32, network=dict(num_layers=2, num_heads=2, head_dim=32))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SD3LayoutModel(TINY).eval()


def test_rl_step_count():
    assert rl_step_count(10, 0.2) == 2 and rl_step_count(10, 1.0) == 10 and rl_step_count(3, 0.2) == 1
    with pytest.raises(ValueError, match="rl_fraction"):
        rl_step_count(10, 0.0)


@pytest.mark.parametrize(("cfg", "layout_fraction"), [(1.0, 1.0), (3.0, 0.2)])
def test_on_policy_ratio_is_one(model, cfg, layout_fraction):
    """Re-scoring the recorded actions with the weights that sampled them gives the same
    log-probabilities (ratio 1), also when the layout branch switches off inside the RL steps."""
    layouts = prompt_only_layouts(3)
    settings = SamplingSettings(steps=6, cfg=cfg, layout_fraction=layout_fraction)
    torch.manual_seed(1)
    recorded = rollout(model, layouts, settings, rl_steps=3)
    assert recorded.x_t.shape == (3, 3, 3, 32, 32) and recorded.log_prob.shape == (3, 3)
    assert recorded.times.shape == (4,) and recorded.images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(recorded.x_t[1:], recorded.x_next[:-1])  # a chain of states
    log_prob, mean, scale = policy_log_probs(model, recorded, settings)
    ratio = torch.exp(log_prob - recorded.log_prob)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=2e-5, rtol=0)
    torch.testing.assert_close(mean, recorded.mean, atol=2e-5, rtol=1e-5)
    assert scale.shape == (3, 3, 1, 1, 1)


def test_rollout_without_noise_is_the_ode_sampler(model):
    layouts = prompt_only_layouts(2)
    x_init, settings = torch.randn(2, 3, 32, 32), SamplingSettings(steps=5, cfg=2.0, layout_fraction=1.0)
    recorded = rollout(model, layouts, settings, rl_steps=5, noise_level=0.0, x_init=x_init)
    expected = sample(model, layouts, settings, x_init=x_init)
    torch.testing.assert_close(recorded.images, expected)


def test_gradients_reach_the_actor_through_the_log_prob(model):
    settings = SamplingSettings(steps=5, cfg=1.0, layout_fraction=1.0)
    recorded = rollout(model, prompt_only_layouts(2), settings, rl_steps=1)
    model.zero_grad()
    log_prob, _, _ = policy_log_probs(model, recorded, settings)
    log_prob.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "attn.processor" in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the layout branch learns from RL
    model.zero_grad()


def test_pool_draws_and_round_trips(model):
    pool = ActionPool(2)
    with pytest.raises(RuntimeError, match="empty"):
        pool.draw()
    entries, settings = [], SamplingSettings(steps=4, cfg=1.0, layout_fraction=1.0)
    for k in range(3):
        entry = rollout(model, prompt_only_layouts(1 + k), settings, rl_steps=1)
        entry.reward = torch.arange(1.0 + k)
        entries.append(entry)
        pool.add(entry)
    assert len(pool) == 2  # the oldest left
    drawn = {len(pool.draw(torch.Generator().manual_seed(s)).layouts) for s in range(20)}
    assert drawn == {2, 3}
    restored = ActionPool(1)
    restored.load_state_dict(pool.state_dict())
    assert len(restored) == 2 and restored.entries[0].layouts == entries[1].layouts
    torch.testing.assert_close(restored.entries[1].x_next, entries[2].x_next)
    assert isinstance(Rollout.from_state_dict(entries[0].state_dict()), Rollout)


def _config(algorithm, **rl):
    config = load_config("tiny", [f"rl.algorithm={algorithm}"])
    config.model = TINY
    defaults = {
        "sampling_steps": 4,
        "batch_size": 4,
        "group_size": 2,
        "critic_warmup": 2,
        "critic_hidden": 32,
        "critic_gate": 0.0,
        "critic_epochs": 2,
    }
    for key, value in {**defaults, **rl}.items():
        setattr(config.rl, key, value)
    return config


def test_ppo_stage_warms_up_the_critic_then_trains_the_actor(model):
    stage = RLStage(_config("ppo", baseline="critic"), model)
    results = [stage.loss(model) for _ in range(3)]
    assert results[0][0] is None and results[1][0] is None  # critic_warmup = 2
    assert [stats.actor for _, stats in results] == [0.0, 0.0, 1.0]
    assert results[2][0] is not None and results[2][0].requires_grad
    _, stats = stage.loss(model)
    assert np.isfinite(stats.reward) and stats.critic_loss is not None and stats.l_rl is not None
    assert stats.critic_mse is not None and stats.within_var is not None
    assert len(stage.pool) == 4 and stage.critic_updates == 4


def test_critic_gate_holds_the_actor_until_the_threshold(model):
    """The actor waits while the critic's fresh-batch MSE exceeds critic_gate x the within-prompt
    variance, and starts once it does not (or after critic_gate_max iterations, saying so)."""
    from idruid.rl.stage import RLStats

    stage = RLStage(_config("ppo", baseline="critic", critic_warmup=1, critic_gate=2.0), model)
    stage.critic_updates = 2  # past the warm-up
    stage._update_gate(RLStats(critic_mse=0.5, within_var=0.2))  # 0.5 > 2 x 0.2
    assert not stage.gate_open and not stage.actor_ready
    stage._update_gate(RLStats(critic_mse=0.4, within_var=0.2))  # 0.4 <= 2 x 0.2
    assert stage.gate_open and stage.actor_ready
    # a gate the critic cannot reach holds the actor for critic_gate_max iterations, then gives way
    stage = RLStage(
        _config("ppo", baseline="critic", critic_warmup=1, critic_gate=1e-9, critic_gate_max=3), model
    )
    actor = [stage.loss(model)[1].actor for _ in range(4)]
    assert actor == [0.0, 0.0, 1.0, 1.0] and stage.critic_updates == 4


def test_fresh_updates_are_on_policy_at_their_first_inner_step(model):
    """rl.update=fresh trains on the batch just sampled: ratio 1 and no clipping at its first inner
    step (age 0); with ppo_epochs=2 the next iteration reuses it (age 1) after a weight update, so
    its ratio moves off 1, without a new rollout."""
    net = SD3LayoutModel(TINY)
    net.load_state_dict(model.state_dict())
    stage = RLStage(_config("ppo", ppo_epochs=2, clip_range=1e-6, kl_weight=0.0), net)
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=1e-2)
    loss, stats = stage.loss(net)
    assert stats.age == 0 and stats.ratio == pytest.approx(1.0, abs=1e-5) and stats.clip_fraction == 0.0
    assert stats.reward is not None and len(stage.pool) == 1
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    _, stats = stage.loss(net)
    assert stats.age == 1 and stats.reward is None and len(stage.pool) == 1  # no new rollout
    assert stats.clip_fraction > 0 and abs(stats.ratio - 1.0) > 1e-6
    _, stats = stage.loss(net)
    assert stats.age == 0 and len(stage.pool) == 2  # the third iteration samples again


def test_pool_updates_draw_from_the_action_pool(model):
    """rl.update=pool (the paper's reading) rolls out every iteration and trains on a pool draw."""
    stage = RLStage(_config("ppo", update="pool", pool_size=2), model)
    ages = [stage.loss(model)[1].age for _ in range(6)]
    assert len(stage.pool) == 2 and set(ages) <= {0, 1} and ages[0] == 0


def test_kl_to_the_frozen_reference(model):
    """The KL term is 0 while the actor equals the reference it froze when RL started, and grows
    after a step, even on a freshly sampled (on-policy) batch."""
    net = SD3LayoutModel(TINY)
    net.load_state_dict(model.state_dict())
    stage = RLStage(_config("ppo", kl_to="reference", kl_weight=1.0), net)
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=1e-2)
    loss, stats = stage.loss(net)
    assert stats.kl == pytest.approx(0.0, abs=1e-10)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    _, stats = stage.loss(net)
    assert stats.age == 0 and stats.kl > 1e-8
    frozen = dict(model.named_parameters())
    assert all(torch.equal(value, frozen[name]) for name, value in stage.reference.items())


def test_detached_unconditional_branch_gets_no_rl_gradient(model):
    """With detach_uncond the gradient of the guided prediction is cfg x the conditional
    prediction's alone; without it, the unconditional one adds (1 - cfg) x its own."""
    from idruid.sampling import guidance_conditioning, guided_prediction

    layouts = prompt_only_layouts(2)
    x, t, cfg = torch.randn(2, 3, 32, 32), torch.tensor([0.9, 0.5]), 3.0
    cond = guidance_conditioning(model, layouts, cfg, "cpu")
    upstream = torch.randn(2, 3, 32, 32)
    params = model.trainable_parameters()

    def grads(fn):
        return torch.autograd.grad((fn() * upstream).sum(), params, allow_unused=True)

    detached = grads(lambda: guided_prediction(model, x, t, cond, cfg, True, detach_uncond=True))
    conditional = grads(lambda: cfg * model(x, t, cond.rows(slice(0, 2)), layout_on=True)[0])
    coupled = grads(lambda: guided_prediction(model, x, t, cond, cfg, True))
    pairs = [(a, b) for a, b in zip(detached, conditional, strict=True) if b is not None]
    assert pairs and all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in pairs)
    assert any(
        not torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        for a, b in zip(coupled, conditional, strict=True)
        if b is not None
    )
    with torch.no_grad():  # the values agree: only the gradient path differs
        torch.testing.assert_close(
            guided_prediction(model, x, t, cond, cfg, True, detach_uncond=True),
            guided_prediction(model, x, t, cond, cfg, True),
            atol=1e-5,
            rtol=1e-4,
        )


def test_sde_windows():
    assert sde_window(10, "first", 0.2) == (0, 2) and sde_window(10, "full", 0.2) == (0, 10)
    generator = torch.Generator().manual_seed(0)
    starts = {sde_window(10, "random", 0.2, generator) for _ in range(200)}
    assert starts == {(0, 2), (1, 2), (2, 2), (3, 2)}  # 2 steps anywhere within the first 5
    with pytest.raises(ValueError, match="window"):
        sde_window(10, "late", 0.2)


@pytest.mark.parametrize(("first_step", "rl_steps"), [(0, 2), (3, 2), (0, 6)])
def test_each_window_records_its_steps(model, first_step, rl_steps):
    """A window records exactly its steps: their times, a chain of states that starts where the
    deterministic sampler is at that step, and an on-policy re-scoring (layout branch switching
    off inside the window included)."""
    layouts, steps, x_init = prompt_only_layouts(2), 6, torch.randn(2, 3, 32, 32)
    settings = SamplingSettings(steps=steps, cfg=2.0, layout_fraction=0.5)
    torch.manual_seed(3)
    recorded = rollout(model, layouts, settings, rl_steps, x_init=x_init, first_step=first_step)
    times = model.process.times(steps)
    torch.testing.assert_close(recorded.times, times[first_step : first_step + rl_steps + 1])
    assert recorded.first_step == first_step and recorded.log_prob.shape == (rl_steps, 2)

    states = []
    sample(
        model,
        layouts,
        settings,
        x_init=x_init,
        step_fn=lambda p, x, t, tn: states.append(x) or model.process.step(p, x, t, tn),
    )
    torch.testing.assert_close(recorded.x_t[0], states[first_step], atol=1e-5, rtol=1e-5)
    log_prob, _, _ = policy_log_probs(model, recorded, settings)
    torch.testing.assert_close(log_prob, recorded.log_prob, atol=2e-5, rtol=0)


def test_grpo_stage_rolls_out_groups_without_a_critic(model):
    stage = RLStage(_config("grpo", group_size=2, credit="image"), model)
    layouts = stage.next_layouts()
    assert len(layouts) == 4 and layouts[0] == layouts[1] and layouts[0] != layouts[2]
    loss, stats = stage.loss(model)
    assert stage.critic is None and loss is not None and stats.critic_loss is None
    entry = stage.pool.entries[-1]
    advantage = stage.advantages(model, entry, model.encode_text(entry.layouts))
    assert advantage.shape == (1, 4)  # (steps, rollouts)
    torch.testing.assert_close(advantage.view(2, 2).sum(1), torch.zeros(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("algorithm", "baseline"), [("ppo", "critic"), ("ppo", "group"), ("grpo", "group")])
def test_per_instance_credit(model, algorithm, baseline):
    """rl.credit=instance keeps each rollout's per-instance reward terms, credits them per box and
    is on-policy at the first draw: the ratio of every valid instance is 1."""
    config = _config(algorithm, baseline=baseline, credit="instance", critic_warmup=0, pool_size=1)
    stage = RLStage(config, model)
    loss, stats = stage.loss(model)
    entry = stage.pool.entries[-1]
    layouts = entry.layouts
    assert entry.instance_reward.shape == (4, max(len(layout.instances) for layout in layouts))
    torch.testing.assert_close(entry.instance_reward.sum(1), entry.reward)
    assert loss is not None and loss.requires_grad and np.isfinite(stats.l_rl)
    assert stats.ratio == pytest.approx(1.0, abs=1e-4) and stats.clip_fraction == 0.0
    if baseline == "group":
        cond = model.encode_text(entry.layouts)
        advantage = stage.advantages(model, entry, cond)
        torch.testing.assert_close(
            advantage.view(-1, 2, 2, advantage.shape[-1]).sum(2),
            torch.zeros(advantage.shape[0], 2, advantage.shape[-1]),
            atol=1e-4,
            rtol=0,
        )
        assert (advantage[:, ~cond.valid] == 0).all()  # padded instances carry nothing
    # a rollout recorded with image credit, as after a resume with rl.credit changed
    entry.instance_reward = None
    with pytest.raises(RuntimeError, match="rl.credit"):
        stage._rewards(entry, model.encode_text(entry.layouts))


def test_sft_batch_renders_the_prompt_only_layouts(model):
    stage = RLStage(_config("sft", group_size=1), model)
    images, layouts = stage.sft_batch()
    assert images.shape == (4, 3, 32, 32) and len(layouts) == 4 and stage.reward is None
    assert images.min() >= -1 and images.max() <= 1 and len({lay.prompt for lay in layouts}) > 1


def test_bad_rl_configs_are_refused():
    for key, value, message in [
        ("algorithm", "dpo", "rl.algorithm"),
        ("credit", "pixel", "rl.credit"),
        ("start_fraction", 1.0, "start_fraction"),
        ("rl_fraction", 0.0, "rl_fraction"),
        ("group_size", 3, "group_size"),
    ]:
        config = RLConfig(algorithm="grpo", batch_size=8)
        setattr(config, key, value)
        with pytest.raises(ConfigError, match=message):
            config.check()


@pytest.mark.parametrize(
    ("algorithm", "credit", "baseline"),
    [
        ("ppo", "image", "critic"),
        ("ppo", "instance", "group"),
        ("grpo", "image", "group"),
        ("sft", "image", "group"),
    ],
)
def test_rl_training_runs_and_resumes(tmp_path, algorithm, credit, baseline):
    overrides = [
        f"rl.algorithm={algorithm}",
        f"rl.credit={credit}",
        f"rl.baseline={baseline}",
        "rl.critic_gate=0",
        "rl.held_out=2",
        "rl.held_out_every=2",
        "rl.start_fraction=0",
        "rl.sampling_steps=3",
        "rl.batch_size=2",
        "rl.group_size=2",
        "rl.critic_warmup=1",
        "rl.critic_hidden=16",
        "steps=4",
        "checkpoint_every=1",
    ]
    config = load_config("tiny", overrides)
    config.steps = 3
    train(config, tmp_path / "run", progress=False)
    config.steps = 4
    train(config, tmp_path / "run", progress=False)  # resumes at step 3 with the pool and critic
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    # the critic's first iteration only fits the critic (critic_warmup=1); later ones train the actor
    assert (log[0]["l_rl"] is None) == (baseline == "critic" and algorithm == "ppo")
    assert all(r["l_rl"] is not None for r in log[1:])
    assert all((r.get("rl_reward") is not None) == (algorithm != "sft") for r in log)
    if algorithm != "sft":
        # measured before the first update, every 2 steps, and after the last update of each run
        assert [r["rl_held_out_step"] for r in log if "rl_held_out_reward" in r] == [0, 3, 4]
        assert [r["rl_held_out_step"] for r in log if "rl_held_out_off_reward" in r] == [0, 3, 4]
        assert all(r["rl_grad_ratio"] > 0 for r in log if r["l_rl"] is not None)


def test_rl_presets_match_the_shipped_model():
    """The shipped model is what `shapes-full` trains, and `shapes-rl` continues a `shapes` run: all
    three share one model config (load_trained_weights refuses any difference)."""
    from idruid.checkpoint import EMBEDDED_CHECKPOINT, load_trained_weights

    for preset in ("shapes-full", "shapes-rl", "shapes"):
        load_trained_weights(SD3LayoutModel(load_config(preset).model), EMBEDDED_CHECKPOINT)
    assert load_config("shapes-rl").init_from == "runs/shapes/model"


def test_log_records_average_the_rl_iterations_of_their_interval():
    window = [
        RLStats(reward=2.0, critic_loss=1.0),  # a critic warm-up iteration: no PPO terms
        RLStats(reward=4.0, critic_loss=3.0, l_rl=-0.5, kl=0.25, clip_fraction=0.5, ratio=1.0),
    ]
    means = mean_rl_stats(window)
    assert {k: v for k, v in means.items() if v is not None} == {
        "reward": 3.0,
        "critic_loss": 2.0,
        "l_rl": -0.5,
        "kl": 0.25,
        "clip_fraction": 0.5,
        "ratio": 1.0,
    }
    assert mean_rl_stats([RLStats(reward=1.0)])["kl"] is None
    by_age = mean_rl_stats([RLStats(clip_fraction=c, age=a) for c, a in [(0.0, 0), (0.5, 1), (0.25, 1)]])
    assert by_age["clip_fraction_age0"] == 0.0 and by_age["clip_fraction_age1"] == 0.375


def _panels(figure) -> list[dict[str, tuple[list, list]]]:
    """The visible panels of a figure, each as line label -> (x, y) (NaN as None)."""

    def values(data):
        return [None if np.isnan(v) else float(v) for v in np.asarray(data, dtype=float)]

    return [
        {line.get_label(): (values(line.get_xdata()), values(line.get_ydata())) for line in axes.get_lines()}
        for axes in figure.axes
        if axes.axison
    ]


def test_loss_plot_adds_the_rl_diagnostics(tmp_path, saved_figures):
    """loss.png plots L_ldm and L_dis (a missing L_dis as a gap, ln 2 dashed) and, with RL, a
    panel per diagnostic the log holds, each key against its step (the held-out reward against
    the step it was measured at); panels without data are left out."""
    stage1 = [{"step": 1, "l_ldm": 0.2, "l_dis": 0.6}, {"step": 2, "l_ldm": 0.1, "l_dis": None}]
    rl = [
        {
            **stage1[0],
            "rl_reward": 5.0,
            "rl_kl": 0.1,
            "rl_held_out_reward": 0.3,
            "rl_held_out_off_reward": 0.2,
            "rl_held_out_step": 0,
        },
        {**stage1[1], "rl_reward": 6.0, "rl_kl": 0.2, "rl_critic_loss": 1.0, "rl_clip_fraction": 0.5},
    ]
    for name, rows in (("stage1", stage1), ("rl", rl)):
        log = tmp_path / f"{name}.jsonl"
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        plot_losses(log, tmp_path / f"{name}.png")
    ldm, dis = {"_child0": ([1.0, 2.0], [0.2, 0.1])}, ([1.0, 2.0], [0.6, None])
    stage1_panels = _panels(saved_figures["stage1.png"])
    assert len(saved_figures["stage1.png"].axes) == 4 and len(stage1_panels) == 2  # one row, two used
    assert stage1_panels[0] == ldm
    (dis_line, ln2) = stage1_panels[1].values()
    assert dis_line == dis and ln2[1] == [pytest.approx(np.log(2))] * 2
    rl_figure = saved_figures["rl.png"]
    assert len(rl_figure.axes) == 8  # a second row for the RL panels
    titles = [axes.get_title() for axes in rl_figure.axes if axes.axison]
    assert titles[0].startswith("L_ldm") and titles[1].startswith("L_dis")
    rl_panels = _panels(rl_figure)[2:]
    assert rl_panels == [
        {"rl_reward": ([1.0, 2.0], [5.0, 6.0])},
        {"rl_held_out_reward": ([0.0], [0.3]), "rl_held_out_off_reward": ([0.0], [0.2])},
        {"rl_critic_mse": ([], []), "rl_within_var": ([], []), "rl_critic_loss": ([2.0], [1.0])},
        {"rl_kl": ([1.0, 2.0], [0.1, 0.2])},
        {"rl_clip_fraction": ([2.0], [0.5])},
    ]


def test_prompt_only_layouts_from_a_file_are_read_in_order_and_cycled(model, tmp_path):
    from idruid.layout import load_layouts, save_layouts

    file = tmp_path / "prompts.jsonl"
    save_layouts(prompt_only_layouts(5), file)
    expected = load_layouts(file)
    config = load_config(
        "tiny", ["rl.algorithm=ppo", f"rl.prompts={file}", "rl.batch_size=3", "rl.group_size=1"]
    )
    stage = RLStage(config, model)
    first = stage.next_layouts()
    second = stage.next_layouts()
    assert first == expected[:3] and second == [expected[3], expected[4], expected[0]]
    with pytest.raises(ConfigError, match="only the shapes world has"):
        RLStage(load_config("tiny", ["rl.algorithm=sft", f"rl.prompts={file}"]), model)


def test_the_ema_warm_up_restarts_when_rl_joins():
    """Before RL joins the count runs from 0; from the RL start on it restarts, so the first RL
    step mixes in 90% of the current weights (warm-start decay (1 + 0) / (10 + 0) = 0.1)."""
    assert [ema_count(s, 100) for s in (0, 99, 100, 101)] == [0, 99, 0, 1]
    assert ema_count(5, 0) == 5
    weight = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([weight], decay=0.999)
    with torch.no_grad():
        weight.fill_(1.0)
    ema.update(ema_count(1700, 1700))
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 0.9))
    ema.update(ema_count(1701, 0))  # without the restart: decay 1702 / 1711, near its 0.999
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 0.9 + (1 - 1702 / 1711) * 0.1))


def test_critic_baseline_advantages_by_hand(model):
    """With the critic as baseline (Eq. 8) the advantage of each recorded step is r - phi(s_t),
    divided by the std over the batch and clipped: recomputed here from the critic's values."""
    stage = RLStage(_config("ppo", baseline="critic", credit="image", advantage_clip=1.0), model)
    stage.loss(model)
    entry = stage.pool.entries[-1]
    cond = model.encode_text(entry.layouts)
    with torch.no_grad():
        raw = entry.reward[None] - stage._critic_values(model, entry, cond)  # (K, B)
    expected = (raw / (raw.std(unbiased=False) + 1e-4)).clamp(-1.0, 1.0)
    torch.testing.assert_close(stage.advantages(model, entry, cond), expected)


@pytest.mark.parametrize(("per_rank", "group", "prompts"), [(6, 4, "shapes"), (4, 2, "file"), (3, 1, "file")])
def test_ranks_take_their_rows_of_one_process_prompt_stream(model, tmp_path, per_rank, group, prompts):
    """Two ranks at rl.batch_size=B draw, in rank order, the prompts one process draws at 2B (a
    group of 4 over batches of 6 spans the ranks), for the shapes world and a prompt file."""
    from idruid.layout import save_layouts
    from idruid.ranks import Ranks

    source = "shapes"
    if prompts == "file":
        source = tmp_path / "prompts.jsonl"
        save_layouts(prompt_only_layouts(5), source)

    def stream(batch: int, rank: int = 0, world: int = 1) -> list:
        overrides = ["rl.algorithm=ppo", f"rl.prompts={source}", f"rl.batch_size={batch}"]
        overrides.append(f"rl.group_size={group}")
        stage = RLStage(load_config("tiny", overrides), model, ranks=Ranks(rank, world))
        return [stage.next_layouts() for _ in range(3)]

    one = stream(2 * per_rank)
    rank0, rank1 = stream(per_rank, 0, 2), stream(per_rank, 1, 2)
    for whole, first, second in zip(one, rank0, rank1, strict=True):
        assert len(first) == len(second) == per_rank and first + second == whole
    assert rank0 != rank1


def test_ranks_roll_out_their_rows_of_one_process_noise(model):
    """A rank's rollout draws the global batch's noise and keeps its rows: rank 0's and rank 1's
    rollouts of B layouts each are one process's rollout of the 2B layouts."""
    from idruid.ranks import Ranks

    layouts = prompt_only_layouts(4)
    settings = SamplingSettings(steps=4, cfg=2.0, layout_fraction=1.0)
    torch.manual_seed(3)
    whole = rollout(model, layouts, settings, rl_steps=2)
    parts = []
    for rank in (0, 1):
        torch.manual_seed(3)  # every rank runs the same seeded stream
        parts.append(rollout(model, layouts[2 * rank : 2 * rank + 2], settings, 2, ranks=Ranks(rank, 2)))
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([p.images for p in parts]), whole.images, **close)
    torch.testing.assert_close(torch.cat([p.x_next for p in parts], dim=1), whole.x_next, **close)
    assert not torch.allclose(parts[0].x_t[0], parts[1].x_t[0])  # the ranks' noise differs
    torch.manual_seed(3)  # the same layouts on both ranks still get different noise
    other = rollout(model, layouts[:2], settings, 2, ranks=Ranks(1, 2))
    assert not torch.allclose(other.x_t[0], parts[0].x_t[0])


def test_the_rl_batch_of_all_processes_must_hold_whole_groups():
    config = RLConfig(algorithm="grpo", batch_size=6, group_size=4)
    with pytest.raises(ConfigError, match=r"divide rl.batch_size=6 \(rl.batch_size counts the rollouts"):
        config.check()
    config.check(processes=2)  # 12 rollouts: three groups, the middle one on both ranks
    with pytest.raises(ConfigError, match="x 3 processes"):
        config.check(processes=3)


def test_rl_state_resumes_only_on_the_process_count_that_wrote_it(model, tmp_path):
    """Each rank's rollouts are its own file beside the shared state; a run resumed on another
    number of processes is refused with the count that fits."""
    from idruid.ranks import Ranks

    overrides = ["rl.algorithm=ppo", "rl.batch_size=4", "rl.group_size=2", "rl.sampling_steps=3"]
    config = load_config("tiny", overrides)
    stage = RLStage(config, model)
    stage.loss(model)
    stage.save_rollouts([], [], str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["rl_rollouts_0.pt"]
    resumed = RLStage(config, model)
    resumed.load_rollouts([], str(tmp_path))
    resumed.load_state_dict(stage.state_dict())
    assert len(resumed.pool) == 1 and torch.equal(resumed.current.x_next, stage.current.x_next)
    with pytest.raises(ConfigError, match="written by 1 process.*--num_processes 1"):
        RLStage(config, model, ranks=Ranks(0, 2)).load_state_dict(stage.state_dict())


@pytest.mark.parametrize("preset", ["sd3-medium", "sd15"])
def test_real_weight_presets_take_the_papers_rl_batch_on_eight_gpus(preset):
    """The paper's RL batch of 16 is that of its 8 GPUs: 2 rollouts a process, groups of 4 over two."""
    rl = load_config(preset, ["rl.prompts=shapes", "rl.detector=analytic"]).rl
    assert (rl.batch_size, rl.group_size) == (2, 4)
    rl.check(processes=8)
    with pytest.raises(ConfigError, match="divide rl.batch_size=2"):
        rl.check()  # one GPU: rl.batch_size=16 (README, "Multi-GPU training")
