"""benchmarks/probe_sketch_loss.py on the tiny model: every target token's loss credited to its DSL word."""

import importlib.util

import torch
import torch.nn.functional as F

import vlm
from test_cli import ROOT, tiny_model  # noqa: F401  (tiny_model is a fixture)
from vlm import prompts
from vlm.sketch import load_samples, to_dsl, write_generated_set

spec = importlib.util.spec_from_file_location("probe_sketch_loss", ROOT / "benchmarks" / "probe_sketch_loss.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_word_losses_add_up_to_the_training_loss_of_the_page(tiny_model, tmp_path):  # noqa: F811
    write_generated_set(tmp_path, 1, seed=3)
    (sample,) = load_samples(tmp_path)
    model = vlm.load(tiny_model)
    rows = probe.word_losses(model, sample)
    assert [word for word, *_ in rows] == to_dsl(sample.tree).split()
    # the same page through the training loss: the mean over its target tokens, the end of chunk included
    encoded = prompts.encode(prompts.sketch_to_html(to_dsl(sample.tree)), model.model.tokenizer, max_length=None)
    input_ids, labels = torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])
    pixels = model.model.vision.preprocess(sample.load_image())[None, None]
    with torch.no_grad():
        out = model.model(input_ids, pixel_values=pixels, labels=labels)
        hidden = out["hidden"][0, -2]  # the last position of the DSL predicts the end of chunk
        end = F.cross_entropy(model.model.logits(hidden[None]).float(), input_ids[0, -1:]).item()
    targets = sum(label != prompts.IGNORE_INDEX for label in encoded.labels[1:])
    assert abs(sum(loss for _, loss, *_ in rows) + end - out["loss"].item() * targets) < 1e-3 * targets
