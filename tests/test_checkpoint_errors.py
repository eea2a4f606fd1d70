"""A saved model that does not fit, is damaged, or comes from a newer vlm fails with a message that says so."""

import json

import pytest
import torch

from test_model import tiny_config
from vlm.config import ConfigError
from vlm.model import VisionLanguageModel, build_model


@pytest.fixture
def saved(tiny_lm_dir, tmp_path):
    torch.manual_seed(0)
    build_model(tiny_config(tiny_lm_dir)).save_pretrained(tmp_path / "run")
    return tmp_path / "run"


def test_a_checkpoint_for_other_backbones_names_expected_and_found(saved, tmp_path):
    meta = json.loads((saved / "config.json").read_text())
    meta["backbones"]["lm_hidden_size"] = 4096
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained for other backbones.*lm_hidden_size: checkpoint expects 4096, backbones have 32"):
        VisionLanguageModel.from_pretrained(saved)


def test_adapter_sizes_that_do_not_fit_are_named(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["num_latents"] = 8  # the saved latents are 4
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not fit this model: .*wrong shape \[\('resampler.latents', \(4, 32\), \(8, 32\)\)"):
        VisionLanguageModel.from_pretrained(saved)


def test_a_missing_weight_file_is_named(saved):
    (saved / "adapter.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no adapter.safetensors"):
        VisionLanguageModel.from_pretrained(saved)


def test_a_corrupt_weight_file_is_named(saved):
    path = saved / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="adapter.safetensors: the file is corrupt or not safetensors"):
        VisionLanguageModel.from_pretrained(saved)


def test_a_config_from_a_newer_version_asks_for_an_upgrade(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="written by a newer vlm .*upgrade vlm"):
        VisionLanguageModel.from_pretrained(saved)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json: not a saved vlm model"):
        VisionLanguageModel.from_pretrained(tmp_path)
