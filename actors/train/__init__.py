"""The one training loop (pretrain, LoRA SFT; DPO later), parallel plan, checkpoints, metrics."""
