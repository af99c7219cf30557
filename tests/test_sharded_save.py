"""The final save under FSDP with SHARDED_STATE_DICT: transformers' save_model writes nothing unless the
plugin says FULL_STATE_DICT, so the stage's adapter would never reach the store. FSDP does not run on
this CPU machine (accelerate falls back to DDP without CUDA: FACTS.md), so the switch is checked on
accelerate's real plugin, and on a real, unsharded Trainer it must change nothing. The multi-rank gather
itself is a GPU check."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FullStateDictConfig, StateDictType

from trainer.models import gather_full_state_dict_for_save


def _fsdp_trainer(plugin: FullyShardedDataParallelPlugin) -> SimpleNamespace:
    # What transformers' Trainer.save_model reads: is_fsdp_enabled and accelerator.state.fsdp_plugin.
    return SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))


def test_sharded_state_dict_switches_to_full_for_the_final_save() -> None:
    plugin = FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")
    assert "FULL_STATE_DICT" not in str(plugin.state_dict_type)  # save_model would skip writing
    assert gather_full_state_dict_for_save(_fsdp_trainer(plugin)) is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # transformers' test in Trainer.save_model
    # gathered on rank 0, on the CPU: a 7B adapter's base never has to fit one GPU twice
    assert isinstance(plugin.state_dict_config, FullStateDictConfig)
    assert plugin.state_dict_config.rank0_only and plugin.state_dict_config.offload_to_cpu
    assert gather_full_state_dict_for_save(_fsdp_trainer(plugin)) is False  # already full: nothing to do


def test_transformers_save_model_still_skips_sharded_fsdp() -> None:
    """The reason for the switch, read from the installed transformers: its FSDP branch saves only under
    FULL_STATE_DICT. If a later version saves sharded adapters itself, this test says so."""
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer.save_model)
    fsdp_branch = source[source.index("elif self.is_fsdp_enabled:"):source.index("elif self.is_deepspeed_enabled")]
    assert '"FULL_STATE_DICT" in str(self.accelerator.state.fsdp_plugin.state_dict_type)' in fsdp_branch
    assert "else" not in fsdp_branch.split("\n", 1)[1]  # no sharded fallback


def test_no_fsdp_changes_nothing(tmp_path: Path) -> None:
    """A real Trainer on the CPU (no FSDP): the helper leaves it alone and save_model writes the adapter."""
    from eval_fixtures import make_tiny_model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    base = make_tiny_model(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                                                          report_to=[]))
    assert gather_full_state_dict_for_save(trainer) is False
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_config.json").exists()
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
