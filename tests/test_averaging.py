"""`vlm average`: the mean of saved models' adapters, written as a model that loads; other models refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model import tiny_config

from vlm.cli import main
from vlm.model import VisionLanguageModel, build_model
from vlm.train.averaging import average_adapters


@pytest.fixture
def three_saved(tiny_lm_dir, tmp_path):
    """One tiny model saved three times with different adapter weights (the third in bf16), as a run's
    checkpoints are; returns the folders and each one's adapters as loaded back."""
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir))
    folders, states = [], []
    for i, dtype in enumerate((None, None, torch.bfloat16)):
        with torch.no_grad():
            for p in model.trainable_parameters().values():
                p.add_(torch.randn_like(p))
        folders.append(model.save_pretrained(tmp_path / f"step-{i}", dtype=dtype))
        states.append(load_file(str(folders[-1] / "adapter.safetensors")))
    return folders, states


def test_the_average_loads_as_the_mean_of_the_saved_adapters(three_saved, tmp_path, capsys):
    folders, states = three_saved
    assert main(["average", *map(str, folders), "-o", str(tmp_path / "mean")]) == 0
    assert "averaged 3 models" in capsys.readouterr().out
    torch.manual_seed(0)  # the tiny vision tower is random: rebuild the same one
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "mean").adapter_state_dict()
    assert loaded.keys() == states[0].keys()
    for key, value in loaded.items():
        mean = sum(state[key].float() for state in states) / 3
        torch.testing.assert_close(value, mean, atol=1e-6, rtol=0)
        assert not torch.equal(value, states[0][key])  # the test would pass on a copy otherwise
    saved = load_file(str(tmp_path / "mean" / "adapter.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}  # the first folder's
    assert json.loads((tmp_path / "mean" / "config.json").read_text()) == json.loads((folders[0] / "config.json").read_text())


def test_the_stored_type_can_be_chosen(three_saved, tmp_path):
    folders, _ = three_saved
    assert main(["average", *map(str, folders[:2]), "-o", str(tmp_path / "mean"), "--dtype", "bfloat16"]) == 0
    assert {v.dtype for v in load_file(str(tmp_path / "mean" / "adapter.safetensors")).values()} == {torch.bfloat16}


def test_another_models_adapters_are_refused_by_the_setting_that_differs(three_saved, tmp_path):
    folders, _ = three_saved
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((folders[1] / "config.json").read_text())
    meta["model"]["num_latents"] += 1
    (other / "config.json").write_text(json.dumps(meta))
    (other / "adapter.safetensors").write_bytes((folders[1] / "adapter.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model.num_latents"):
        average_adapters([folders[0], other], tmp_path / "mean")

    del meta["model"]["global_latents"]  # saved before the setting existed: its default, the same model
    meta["model"]["num_latents"] -= 1
    (other / "config.json").write_text(json.dumps(meta))
    average_adapters([folders[0], other], tmp_path / "older")
    assert (tmp_path / "older" / "adapter.safetensors").is_file()

    (other / "config.json").write_text((folders[1] / "config.json").read_text())
    state = load_file(str(folders[1] / "adapter.safetensors"))
    save_file({**state, "resampler.extra": torch.zeros(2)}, str(other / "adapter.safetensors"))
    with pytest.raises(ValueError, match=r"other tensors.*resampler\.extra"):
        average_adapters([folders[0], other], tmp_path / "mean")
    assert not (tmp_path / "mean" / "adapter.safetensors").exists()


def test_bad_input_is_one_line_and_overwrites_nothing(three_saved, tmp_path, capsys):
    folders, states = three_saved
    for argv, message in [
        ([folders[0]], "at least two saved models, got 1"),
        ([folders[0], tmp_path / "missing"], "has no config.json"),
        ([*folders[:2], "-o", folders[2]], "already holds a saved model"),
    ]:
        argv = [*map(str, argv), *([] if "-o" in argv else ["-o", str(tmp_path / "mean")])]
        assert main(["average", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlm: error: ") and message in err and err.count("\n") == 1
    kept = load_file(str(folders[2] / "adapter.safetensors"))
    assert all(torch.equal(kept[k], states[2][k]) for k in kept)
