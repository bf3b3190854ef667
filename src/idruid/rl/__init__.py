"""The RL stage (paper 3.3): SDE policy, rewards, critic, PPO / GRPO and the action pool."""
