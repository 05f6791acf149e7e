"""The model shared by every stage: config registry, transformer, HF checkpoints, tokenizer, chat template."""
from actors.model.config import ModelConfig, get_config, list_configs
from actors.model.transformer import Transformer
from actors.model.hf import load_hf, save_hf, read_lineage

__all__ = ["ModelConfig", "get_config", "list_configs", "Transformer", "load_hf", "save_hf",
           "read_lineage"]
