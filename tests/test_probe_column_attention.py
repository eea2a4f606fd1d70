"""benchmarks/probe_column_attention.py on a tiny model with grid latents: attention read at the colour's position."""

import importlib.util

import pytest
import torch

from test_cli import ROOT, tiny_model  # noqa: F401  (tiny_model is a fixture)
from vlm.config import ModelConfig
from vlm.model import build_model

spec = importlib.util.spec_from_file_location("probe_column_attention",
                                              ROOT / "benchmarks" / "probe_column_attention.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

SIZES = dict(resampler_depth=1, resampler_heads=2, resampler_dim_head=8, cross_attn_heads=2, cross_attn_dim_head=8,
             cross_attn_ff_mult=2, cross_attn_every_n_layers=2)


def grid_model(tiny_model, **options):  # noqa: F811
    """The tiny test model's backbones with a 4 x 8 grid of latents, one per cell of a 128 x 256 picture."""
    folder = tiny_model.parent
    torch.manual_seed(0)
    config = ModelConfig(lm=str(folder / "lm"), vision="timm:resnet10t",
                         vision_weights=str(folder / "resnet10t.safetensors"),
                         image_size=(128, 256), **{**SIZES, "num_latents": 32, "grid_latents": True, **options})
    return build_model(config)


def test_attention_at_the_colour_is_each_blocks_softmax_and_leaves_the_logits_alone(tiny_model):  # noqa: F811
    net = grid_model(tiny_model)
    for block in net.cross_attn.values():  # open gates: the blocks change what the LM computes
        block.attention_gate.data.fill_(1.0)
    input_ids = net.tokenizer("<image>HTML: row { double { btn-green } }", return_tensors="pt").input_ids
    pixels = torch.rand(1, 1, 3, 128, 256)
    attention, logits = probe.attention_by_block(net, input_ids, pixels)
    with torch.no_grad():
        plain = net.logits(net(input_ids, pixel_values=pixels)["hidden"][0]).float()
    torch.testing.assert_close(logits, plain)
    assert set(attention) == set(net.cross_attn)
    for weights in attention.values():
        assert weights.shape == (input_ids.shape[1], 32)
        torch.testing.assert_close(weights.sum(-1), torch.ones(input_ids.shape[1]))


@pytest.mark.parametrize("global_latents, read_by, global_share_expected", [
    (0, "decoder", 0.0),
    (4, "decoder", 4 / 36),
    (4, "grid", 0.0),  # read by the grid latents alone: the blocks see the 32 places
])
def test_attention_spread_evenly_scores_chance_in_every_column_and_row(tiny_model, global_latents, read_by,  # noqa: F811
                                                                       global_share_expected):
    net = grid_model(tiny_model, global_latents=global_latents, global_latents_read_by=read_by)
    with torch.no_grad():
        for block in net.cross_attn.values():  # queries of zero: every latent gets the same weight
            block.attention.to_q.weight.zero_()
    buttons = [b for seed in range(3) for b in probe.page_buttons(net, seed, vocabulary="pix2code", style="pix2code")]
    assert buttons, "the pages hold coloured buttons in rows of several columns"
    assert {b.word for b in buttons} <= set(probe.COLOURS)
    for button in buttons:
        for share, chance, row, row_chance, global_share in button.shares.values():
            assert 0 < chance < 1 and 0 < row_chance < 1
            assert share == pytest.approx(chance, abs=1e-5) and row == pytest.approx(row_chance, abs=1e-5)
            assert global_share == pytest.approx(global_share_expected, abs=1e-5)


def test_a_model_without_grid_latents_is_refused_by_name(tiny_model):  # noqa: F811
    net = grid_model(tiny_model, num_latents=8, grid_latents=False)
    with pytest.raises(ValueError, match="grid_latents"):
        probe.page_buttons(net, 0, vocabulary="pix2code", style="pix2code")


def test_a_latent_is_placed_at_its_cell_row_by_row(tiny_model):  # noqa: F811
    net = grid_model(tiny_model)  # 4 rows x 8 columns of cells
    cells = probe.latent_cells(net)
    left_half = probe.Box(token="double", x=0, y=0, w=400, h=300, parent="row")
    bottom_row = probe.Box(token="row", x=0, y=225, w=800, h=75, parent="body")
    latent = torch.arange(32)
    assert probe.inside(cells, left_half, 1.0, 0.0, 0.0, (800, 300)).tolist() == (latent % 8 < 4).tolist()
    # the whole page drawn at half scale, 400 pixels from the left edge of a picture 150 high: the right half
    page = probe.Box(token="body", x=0, y=0, w=800, h=300, parent="")
    assert probe.inside(cells, page, 0.5, 400.0, 0.0, (800, 150)).tolist() == (latent % 8 >= 4).tolist()
    assert probe.inside(cells, bottom_row, 1.0, 0.0, 0.0, (800, 300)).tolist() == (latent >= 24).tolist()


def test_pages_without_a_button_to_place_are_named_not_averaged():
    with pytest.raises(ValueError, match="no coloured button in a column beside other columns"):
        probe.summary([])
