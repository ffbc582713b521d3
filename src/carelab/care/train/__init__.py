"""Training: SFT and GRPO on TRL (``config`` the options, ``sft``/``grpo`` the runs, curriculum and adapters)."""
