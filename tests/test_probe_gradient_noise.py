"""benchmarks/probe_gradient_noise.py on the tiny model: batches that agree, and batches that do not."""

import importlib.util
import math

import pytest
import torch

from test_cli import ROOT, tiny_model  # noqa: F401  (tiny_model is a fixture)
from vlm.model import VisionLanguageModel
from vlm.train.batching import Collator
from vlm.train.sources import SketchPages

spec = importlib.util.spec_from_file_location("probe_gradient_noise", ROOT / "benchmarks" / "probe_gradient_noise.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


@pytest.fixture(scope="module")
def model_and_batches(tiny_model):  # noqa: F811
    model = VisionLanguageModel.from_pretrained(tiny_model)
    with torch.no_grad():  # gates open, as after training: at zero they stop every gradient but their own
        for name, parameter in model.trainable_parameters().items():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    pages = SketchPages(pages=8, tasks={"html": 1})
    collate = Collator(model, max_length=4096, max_pixels=10**8, on_error={"": "raise"})
    return model, [collate([pages[i], pages[i + 1]]) for i in range(0, 8, 2)]


def test_the_same_batch_again_agrees_fully(model_and_batches):
    model, batches = model_and_batches
    result = probe.gradient_noise(model, [batches[0]] * 4)
    groups = result["groups"]
    assert set(groups) == {probe.group_name(name) for name in model.trainable_parameters()}
    for rms, agreement, per_element in groups.values():
        assert rms > 0 and agreement == pytest.approx(1.0, abs=1e-4) and per_element == pytest.approx(2.0, rel=1e-3)


def test_different_batches_agree_less(model_and_batches):
    model, batches = model_and_batches
    groups = probe.gradient_noise(model, batches)["groups"]
    assert all(-1 <= agreement < 0.999 and 0 < per_element < math.sqrt(4) for _, agreement, per_element in groups.values())


def test_an_odd_number_of_batches_is_refused(model_and_batches):
    model, batches = model_and_batches
    with pytest.raises(ValueError, match="even number of batches"):
        probe.gradient_noise(model, batches[:3])
