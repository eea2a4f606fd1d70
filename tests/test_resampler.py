"""The Perceiver Resampler's grid latents: latent i starts from image token i."""

import pytest
import torch

from tests.test_model import open_gates, tiny_config
from vlm.config import ConfigError, ModelConfig
from vlm.model import VisionLanguageModel, build_model
from vlm.resampler import PerceiverResampler


def grid_resampler(**overrides) -> PerceiverResampler:
    torch.manual_seed(0)
    sizes = dict(dim=16, media_dim=8, depth=2, heads=2, dim_head=8, num_latents=6, grid_size=(2, 3), grid_latents=True)
    return PerceiverResampler(**{**sizes, **overrides})


def silence_layers(resampler: PerceiverResampler):
    """Zero each layer's output projection: the layers then add nothing to the latents."""
    with torch.no_grad():
        for attention, ff in resampler.layers:
            attention.to_out.weight.zero_()
            ff[-1].weight.zero_()


def positioned_tokens(resampler: PerceiverResampler, media: torch.Tensor) -> torch.Tensor:
    rows, cols = resampler.grid_size
    position = (resampler.row_embeddings[:, None] + resampler.col_embeddings[None, :]).reshape(rows * cols, -1)
    return resampler.project(media) + position


def test_each_grid_latent_starts_from_its_own_cell():
    resampler = grid_resampler()
    silence_layers(resampler)
    media = torch.randn(2, 1, 6, 8)  # (b, m, cells, media_dim)
    with torch.no_grad():
        out = resampler(media)  # (b, m, latents, dim)
        expected = resampler.norm(resampler.latents + positioned_tokens(resampler, media))
    torch.testing.assert_close(out, expected)


def test_a_change_in_one_cell_reaches_its_latent_most():
    resampler = grid_resampler()
    media = torch.randn(1, 1, 6, 8)
    changed = media.clone()
    changed[0, 0, 4] += 5.0
    with torch.no_grad():
        moved = (resampler(changed) - resampler(media)).norm(dim=-1)[0, 0]  # (latents,)
    assert moved.argmax() == 4


def test_frames_of_one_image_start_each_latent_from_the_mean_of_its_cell():
    resampler = grid_resampler()
    silence_layers(resampler)
    frames = torch.randn(1, 1, 3, 6, 8)  # (b, m, f, cells, media_dim)
    with torch.no_grad():
        out = resampler(frames)
        tokens = positioned_tokens(resampler, frames) + resampler.frame_embeddings[:3, None]
        expected = resampler.norm(resampler.latents + tokens.mean(dim=2))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("radius, reached", [
    (0, [5]),
    (1, [0, 1, 2, 4, 5, 6, 8, 9, 10]),  # the 3x3 cells around row 1, column 1 of a 3x4 grid
    (None, list(range(12))),  # no radius: every latent reads the whole picture
])
def test_a_latent_kept_to_its_place_reads_only_the_cells_within_its_radius(radius, reached):
    resampler = grid_resampler(num_latents=12, grid_size=(3, 4), grid_radius=radius)
    media = torch.randn(1, 1, 2, 12, 8)  # (b, m, frames, cells, media_dim)
    changed = media.clone()
    changed[0, 0, 1, 5] += 5.0  # cell 5 (row 1, column 1) in the second frame
    with torch.no_grad():
        moved = (resampler(changed) - resampler(media)).norm(dim=-1)[0, 0]  # (latents,)
    assert (moved > 1e-6).nonzero().flatten().tolist() == reached


@pytest.mark.parametrize("radius, reached", [
    (0, [5]),
    (None, list(range(12))),
])
def test_global_latents_read_the_whole_picture_beside_grid_latents_kept_to_their_places(radius, reached):
    resampler = grid_resampler(num_latents=12, grid_size=(3, 4), grid_radius=radius, global_latents=2)
    media = torch.randn(1, 1, 12, 8)  # (b, m, cells, media_dim)
    changed = media.clone()
    changed[0, 0, 5] += 5.0
    with torch.no_grad():
        out = resampler(media)
        moved = (resampler(changed) - out).norm(dim=-1)[0, 0]  # (cells + global latents,)
    assert out.shape == (1, 1, 14, 16)
    assert (moved > 1e-6).nonzero().flatten().tolist() == reached + [12, 13]


@pytest.mark.parametrize("radius", [0, None])
def test_global_latents_read_by_the_grid_carry_the_whole_picture_to_every_place_and_are_not_output(radius):
    resampler = grid_resampler(num_latents=12, grid_size=(3, 4), grid_radius=radius, global_latents=2,
                               global_latents_read_by="grid")
    media = torch.randn(1, 1, 12, 8)
    changed = media.clone()
    changed[0, 0, 5] += 5.0
    with torch.no_grad():
        out = resampler(media)
        moved = (resampler(changed) - out).norm(dim=-1)[0, 0]  # (cells,): the global latents are not output
    assert out.shape == (1, 1, 12, 16) and resampler.num_output_latents == 12
    assert (moved > 1e-6).all(), "every grid latent reads cell 5 through the global latents, however far it is"
    resampler.global_latents_read_by = "decoder"  # the same weights, the global latents output instead of read
    with torch.no_grad():
        moved = (resampler(changed) - resampler(media)).norm(dim=-1)[0, 0, :12]
    assert (moved > 1e-6).nonzero().flatten().tolist() == ([5] if radius == 0 else list(range(12)))


def test_global_latents_need_grid_latents():
    with pytest.raises(ValueError, match="global_latents needs grid_latents and a count >= 0, got 2"):
        grid_resampler(grid_latents=False, global_latents=2)
    with pytest.raises(ConfigError, match="model.global_latents needs model.grid_latents: true and a count >= 0, got 2"):
        ModelConfig(num_latents=6, global_latents=2)
    with pytest.raises(ConfigError, match="model.global_latents needs .* got -1"):
        ModelConfig(num_latents=6, grid_latents=True, global_latents=-1)
    with pytest.raises(ValueError, match="global_latents_read_by must be 'decoder' or 'grid', got 'lm'"):
        grid_resampler(global_latents=2, global_latents_read_by="lm")
    with pytest.raises(ConfigError, match="model.global_latents_read_by must be 'decoder' or 'grid', got 'lm'"):
        ModelConfig(num_latents=6, grid_latents=True, global_latents=2, global_latents_read_by="lm")


def test_grid_radius_needs_grid_latents():
    with pytest.raises(ValueError, match="grid_radius needs grid_latents"):
        grid_resampler(grid_latents=False, grid_radius=1)
    with pytest.raises(ConfigError, match="model.resampler_grid_radius needs model.grid_latents: true"):
        ModelConfig(num_latents=6, resampler_grid_radius=1)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_latents=4), "4 latents, a 2x3 grid of 6 cells"),
    (dict(grid_size=None), "6 latents, no grid"),
])
def test_grid_latents_need_one_latent_per_cell(overrides, message):
    with pytest.raises(ValueError, match=f"grid_latents needs one latent per cell of the image's token grid: {message}"):
        grid_resampler(**overrides)


def test_a_model_with_grid_latents_trains(tiny_lm_dir):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir, "timm", num_latents=6, grid_latents=True))  # resnet10t at 64x96: 2x3
    assert model.vision.grid_size == (2, 3)
    open_gates(model)  # closed gates pass no gradient to the resampler
    text = model.tokenizer("<image> a cat", return_tensors="pt", add_special_tokens=False).input_ids
    loss = model(text, pixel_values=torch.randn(1, 1, 3, 64, 96), labels=text)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.resampler.project.weight.grad.abs().sum() > 0


def test_a_model_whose_latents_do_not_fit_the_grid_names_the_count_it_needs(tiny_lm_dir):
    with pytest.raises(ConfigError, match=r"model.grid_latents needs model.num_latents = 6, the cells of the encoder's 2x3 token grid at image_size \[64, 96\]; got 4"):
        build_model(tiny_config(tiny_lm_dir, "timm", num_latents=4, grid_latents=True))


@pytest.mark.parametrize("read_by", ["decoder", "grid"])
def test_a_model_with_latents_kept_to_their_places_saves_and_loads_them(tiny_lm_dir, tmp_path, read_by):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir, "timm", num_latents=6, grid_latents=True, resampler_grid_radius=0,
                                    global_latents=2, global_latents_read_by=read_by))
    open_gates(model)
    pixels = torch.randn(1, 1, 3, 64, 96)
    text = model.tokenizer("<image> a cat", return_tensors="pt", add_special_tokens=False).input_ids
    model.save_pretrained(tmp_path / "run")
    torch.manual_seed(0)  # the tiny vision tower is random: rebuild the same one
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "run")
    assert loaded.config.resampler_grid_radius == 0 and loaded.resampler.local.equal(torch.eye(6, dtype=torch.bool))
    assert loaded.config.global_latents == 2 and torch.equal(loaded.resampler.global_latents, model.resampler.global_latents)
    assert loaded.config.global_latents_read_by == read_by
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, pixel_values=pixels)["hidden"], model(text, pixel_values=pixels)["hidden"])
