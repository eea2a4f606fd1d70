"""The core model on tiny random backbones: masking, gating, freezing, save/load."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm.config import ConfigError, ModelConfig
from vlm.model import VisionLanguageModel, build_model, distinct_rows

VISION = {
    "open_clip": dict(vision="open_clip:vlm-tiny-vit", image_size=None),
    "timm": dict(vision="timm:resnet10t", image_size=(64, 96)),
}


def tiny_config(lm_dir, vision="timm", **overrides) -> ModelConfig:
    sizes = dict(num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
                 cross_attn_heads=2, cross_attn_dim_head=8, cross_attn_ff_mult=2, cross_attn_every_n_layers=2)
    return ModelConfig(lm=str(lm_dir), vision_weights=None, **VISION[vision], **{**sizes, **overrides})


def open_gates(model: VisionLanguageModel, value: float = 1.0):
    with torch.no_grad():
        for block in model.cross_attn.values():
            block.attention_gate.fill_(value)
            block.ff_gate.fill_(value)


def images_for(model, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, 3, *model.vision.image_size, generator=generator)


def ids(model, text):
    return model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def logits(model, input_ids, pixel_values=None, **kwargs):
    with torch.no_grad():
        return model.logits(model(input_ids, pixel_values=pixel_values, **kwargs)["hidden"])


@pytest.fixture(params=["timm", "open_clip"])
def model(request, tiny_lm_dir):
    torch.manual_seed(0)
    return build_model(tiny_config(tiny_lm_dir, request.param))


def test_closed_gates_give_the_bare_lm(model):
    text = ids(model, "a photo of a cat")
    ours = logits(model, text)[..., : model.lm_vocab_size]
    torch.testing.assert_close(ours, model.lm(text).logits, atol=1e-5, rtol=0)
    # with images the adapters still add exactly nothing while the gates are closed
    with_images = ids(model, "a photo <image> of a cat <image> dog")
    ours = logits(model, with_images, images_for(model, 2))[..., : model.lm_vocab_size]
    bare = model.lm(inputs_embeds=model.embed(with_images)).logits
    torch.testing.assert_close(ours, bare, atol=1e-5, rtol=0)


def first_block_output(model, input_ids, pixel_values):
    """The output of the lowest cross-attention block: its input does not depend on any image yet."""
    captured = {}
    block = model.cross_attn[str(model.cross_attn_layers[0])]
    handle = block.register_forward_hook(lambda module, args, output: captured.update(out=output))
    logits(model, input_ids, pixel_values)
    handle.remove()
    return captured["out"]


def test_each_token_sees_only_its_most_recent_image(model):
    open_gates(model)
    text = ids(model, "a red button <image> the quick brown <image> lazy dog")
    first, second = (text[0] == model.image_token_id).nonzero()[:, 0].tolist()
    images = images_for(model, 2, seed=1)
    base, base_block = logits(model, text, images), first_block_output(model, text, images)

    # a later image changes nothing before it, and every token from its marker on
    changed_second = images.clone()
    changed_second[:, 1] = images_for(model, 1, seed=2)[:, 0]
    out = logits(model, text, changed_second)
    torch.testing.assert_close(out[:, :second], base[:, :second], atol=0, rtol=0)
    assert (out[:, second:] - base[:, second:]).abs().amax(-1).min() > 1e-4

    # an earlier image changes its own tokens, and is not what later tokens cross-attend to
    changed_first = images.clone()
    changed_first[:, 0] = images_for(model, 1, seed=3)[:, 0]
    out, block = logits(model, text, changed_first), first_block_output(model, text, changed_first)
    torch.testing.assert_close(out[:, :first], base[:, :first], atol=0, rtol=0)
    assert (out[:, first:second] - base[:, first:second]).abs().amax(-1).min() > 1e-4
    assert (block[:, first:second] - base_block[:, first:second]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(block[:, second:], base_block[:, second:], atol=0, rtol=0)


def test_text_before_the_first_image_is_the_bare_lm_even_with_open_gates(model):
    open_gates(model)
    text = ids(model, "the quick brown fox <image> a cat")
    first = int((text[0] == model.image_token_id).nonzero()[0, 0])
    ours = logits(model, text, images_for(model, 1))[:, :first, : model.lm_vocab_size]
    torch.testing.assert_close(ours, model.lm(text[:, :first]).logits, atol=1e-5, rtol=0)


def test_a_batch_mixing_0_1_and_3_images_matches_each_sample_alone(model):
    open_gates(model, 0.5)
    texts = ["a photo of a cat sitting", "<image> a red button", "<image> a <image> green <image> button"]
    counts = [0, 1, 3]
    pad = model.tokenizer.pad_token_id
    rows = [ids(model, t)[0] for t in texts]
    length = max(len(r) for r in rows)
    batch = torch.full((3, length), pad)
    mask = torch.zeros(3, length, dtype=torch.long)
    pixel_values = torch.zeros(3, 3, 3, *model.vision.image_size)
    for i, (row, n) in enumerate(zip(rows, counts)):
        batch[i, : len(row)] = row
        mask[i, : len(row)] = 1
        pixel_values[i, :n] = images_for(model, n, seed=10 + i)[0] if n else 0
    together = logits(model, batch, pixel_values, attention_mask=mask)
    for i, (row, n) in enumerate(zip(rows, counts)):
        alone = logits(model, row[None], images_for(model, n, seed=10 + i) if n else None)
        torch.testing.assert_close(together[i, : len(row)], alone[0], atol=1e-4, rtol=1e-4)


def test_distinct_rows_merges_only_equal_rows():
    rows = torch.tensor([[1, 2], [3, 4], [1, 2], [2, 1], [3, 4]])  # [2, 1] has the sum of [1, 2]: compared in full
    distinct, copies = distinct_rows(rows)
    assert distinct.tolist() == [[1, 2], [3, 4], [2, 1]] and copies.tolist() == [0, 1, 0, 2, 1]
    assert torch.equal(distinct[copies], rows)
    distinct, copies = distinct_rows(rows[:2])
    assert copies is None and torch.equal(distinct, rows[:2])


def test_a_picture_given_several_times_is_encoded_once_with_the_same_latents(model):
    seen = []
    model.vision.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    a, b = images_for(model, 2)[0]
    pixel_values = torch.stack([torch.stack([a, b]), torch.stack([b, torch.zeros_like(a)]), torch.stack([a, a])])
    with torch.no_grad():
        latents = model.encode_images(pixel_values, torch.tensor([2, 1, 2]))  # (3, 2, l, d)
        alone = [model.encode_images(image[None, None], torch.tensor([1]))[0, 0] for image in (a, b)]
    assert seen[0] == 2  # 5 real pictures, 2 distinct
    for row, column, image in [(0, 0, 0), (0, 1, 1), (1, 0, 1), (2, 0, 0), (2, 1, 0)]:
        torch.testing.assert_close(latents[row, column], alone[image], atol=1e-5, rtol=1e-5)
    assert not latents[1, 1].any()  # padding


def test_an_optimiser_step_changes_only_the_adapters(model):
    open_gates(model, 0.1)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("lm.", "vision."))}
    adapters = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    text = ids(model, "<image> a photo of a cat")
    optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-2)
    model.train()
    loss = model(text, pixel_values=images_for(model, 1), labels=text)["loss"]
    loss.backward()
    optimizer.step()
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), f"frozen weight {key} changed"
    assert any(not torch.equal(model.adapter_state_dict()[k], v) for k, v in adapters.items())
    assert not model.special_embeddings.requires_grad
    assert all(not p.requires_grad for p in model.lm.parameters())
    assert model.lm.training is False and model.vision.training is False


def test_training_the_special_tokens_leaves_the_embedding_matrix_frozen(tiny_lm_dir):
    model = build_model(tiny_config(tiny_lm_dir, train_special_token_embeddings=True))
    assert model.special_embeddings.requires_grad
    assert not model.lm.get_input_embeddings().weight.requires_grad
    before = model.lm.get_input_embeddings().weight.clone()
    text = ids(model, "<image> a cat<|endofchunk|>")
    model(text, pixel_values=images_for(model, 1), labels=text)["loss"].backward()
    assert model.special_embeddings.grad is not None and model.special_embeddings.grad.abs().sum() > 0
    assert torch.equal(model.lm.get_input_embeddings().weight, before)


def test_loss_ignores_padding_image_markers_and_text_before_the_first_image(model):
    text = ids(model, "a b c <image> a cat")
    first = int((text[0] == model.image_token_id).nonzero()[0, 0])
    out = model(text, pixel_values=images_for(model, 1), labels=text)
    hidden = out["hidden"]
    # targets are the tokens after the image marker only
    expected = torch.nn.functional.cross_entropy(model.logits(hidden[0, first:-1]), text[0, first + 1 :])
    torch.testing.assert_close(out["loss"], expected)
    # each example's summed token losses, for the loss by data source
    torch.testing.assert_close(out["example_losses"], expected[None].detach() * (text.shape[1] - first - 1))


def test_save_and_load_give_identical_logits_and_store_no_backbone(model, tmp_path):
    open_gates(model, 0.3)
    text = ids(model, "<image> a red button")
    images = images_for(model, 1)
    before = logits(model, text, images)
    model.save_pretrained(tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["adapter.safetensors", "config.json"]

    saved = load_file(str(tmp_path / "run" / "adapter.safetensors"))
    assert not any(k.startswith(("lm.", "vision.")) for k in saved)
    torch.manual_seed(0)  # the tiny vision tower is random: rebuild the same one
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "run")
    torch.testing.assert_close(logits(loaded, text, images), before, atol=0, rtol=0)


def test_cross_attention_sits_before_every_nth_layer_from_the_first_chosen(tiny_lm_dir):
    model = build_model(tiny_config(tiny_lm_dir, cross_attn_every_n_layers=1, cross_attn_first_layer=2))
    assert model.cross_attn_layers == [2, 3]
    model = build_model(tiny_config(tiny_lm_dir, cross_attn_every_n_layers=2))
    assert model.cross_attn_layers == [1, 3]


def test_a_wrong_decoder_layer_path_is_a_clear_error(tiny_lm_dir):
    with pytest.raises(ValueError, match="no list of decoder layers at 'model.nothing'"):
        build_model(tiny_config(tiny_lm_dir, decoder_layers_attr="model.nothing"))


def test_weights_saved_in_bfloat16_load_into_a_float32_model(model, tmp_path):
    open_gates(model, 0.3)
    model.save_pretrained(tmp_path / "run", dtype=torch.bfloat16)
    torch.manual_seed(0)
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "run")
    for key, value in model.adapter_state_dict().items():
        torch.testing.assert_close(loaded.adapter_state_dict()[key], value.to(torch.bfloat16).float(), atol=0, rtol=0)
        assert loaded.adapter_state_dict()[key].dtype == torch.float32


def test_a_bfloat16_vision_tower_gives_bfloat16_features_outside_autocast(tiny_lm_dir):
    model = build_model(tiny_config(tiny_lm_dir, vision_dtype="bfloat16"))
    assert next(model.vision.model.parameters()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.vision(torch.zeros(2, 3, *model.vision.image_size))
    assert tokens.dtype == torch.bfloat16 and tokens.shape[:2] == (2, model.vision.grid_size[0] * model.vision.grid_size[1])
    text = ids(model, "<image> a cat")
    assert torch.isfinite(model(text, pixel_values=images_for(model, 1), labels=text)["loss"])


@pytest.mark.parametrize("vision", ["timm", "open_clip"])
def test_the_colour_grid_appends_each_cells_sub_cell_colours(tiny_lm_dir, vision):
    torch.manual_seed(0)
    plain = build_model(tiny_config(tiny_lm_dir, vision))
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir, vision, colour_grid=2))
    assert model.vision.width == plain.vision.width + 12
    rows, cols = model.vision.grid_size
    height, width = model.vision.image_size
    pixels = torch.zeros(1, 3, height, width)
    pixels[0, 1, height // rows // 2 :, : width // cols // 2] = 1.0  # green below half a cell, left of half a cell
    tokens = model.vision(pixels)  # (1, rows x cols, width + 12)
    first_cell = tokens[0, 0, -12:].view(2, 2, 3)  # (sub-row, sub-column, channel)
    assert torch.equal(first_cell[1, 0], torch.tensor([0.0, 1.0, 0.0]))  # its lower-left sub-cell is green
    assert torch.equal(first_cell[0], torch.zeros(2, 3)) and torch.equal(first_cell[1, 1], torch.zeros(3))
    assert torch.equal(tokens[..., : plain.vision.width], plain.vision(pixels))  # the features are unchanged
    text = ids(model, "<image> a cat")
    assert torch.isfinite(model(text, pixel_values=images_for(model, 1), labels=text)["loss"])


@pytest.mark.parametrize("finer", [{"half_stride_features": True}, {"quarter_stride_features": True},
                                   {"half_stride_features": True, "quarter_stride_features": True}])
def test_finer_stride_features_append_each_cells_sub_cells_after_the_colours(tiny_lm_dir, finer):
    torch.manual_seed(0)
    plain = build_model(tiny_config(tiny_lm_dir, colour_grid=1))
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir, colour_grid=1, **finer))
    encoder = model.vision.model
    assert list(model.vision.finer_stages) == [k for k, name in ((2, "half_stride_features"), (4, "quarter_stride_features")) if name in finer]
    assert encoder.feature_info[-1]["reduction"] == 32
    pixels = images_for(model, 1)[0]
    tokens = model.vision(pixels)  # (1, rows x cols, width)
    assert torch.equal(tokens[..., : plain.vision.width], plain.vision(pixels))  # features, then colours, unchanged
    rows, cols = model.vision.grid_size
    start = plain.vision.width
    for k, stage in model.vision.finer_stages.items():  # half-stride sub-cells first, then quarter-stride ones
        assert encoder.feature_info[stage]["reduction"] == 32 // k
        channels = encoder.feature_info[stage]["num_chs"]
        with torch.no_grad():
            _, (fine,) = encoder.forward_intermediates(pixels, indices=[stage])  # (1, channels, k rows, k cols)
        for r, c in [(0, 0), (rows - 1, cols - 1), (1, 2)]:
            appended = tokens[0, r * cols + c, start : start + k * k * channels].view(k, k, channels)  # (sub-row, sub-col, ch)
            for i in range(k):
                for j in range(k):
                    sub_cell = fine[0, :, k * r + i, k * c + j]
                    torch.testing.assert_close(appended[i, j], (sub_cell - sub_cell.mean()) / sub_cell.var(unbiased=False).add(1e-5).sqrt())
        start += k * k * channels
    assert model.vision.width == start
    text = ids(model, "<image> a cat")
    assert torch.isfinite(model(text, pixel_values=images_for(model, 1), labels=text)["loss"])


def test_finer_stride_features_refuse_a_vit_and_a_size_whose_maps_do_not_nest(tiny_lm_dir):
    for name in ("half_stride_features", "quarter_stride_features"):
        with pytest.raises(ConfigError, match=f"{name} needs a timm CNN"):
            tiny_config(tiny_lm_dir, "open_clip", **{name: True})
    with pytest.raises(ValueError, match=r"half_stride_features .* \[64, 80\] gives \(4, 5\) and \(2, 3\) \(use multiples of 32\)"):
        build_model(dataclasses.replace(tiny_config(tiny_lm_dir, half_stride_features=True), image_size=(64, 80)))
    with pytest.raises(ValueError, match=r"quarter_stride_features .* \[64, 80\] gives \(8, 10\) and \(2, 3\)"):
        build_model(dataclasses.replace(tiny_config(tiny_lm_dir, quarter_stride_features=True), image_size=(64, 80)))


def test_adapters_without_half_stride_features_start_a_model_with_them_unchanged(tiny_lm_dir, tmp_path):
    torch.manual_seed(0)
    plain = build_model(tiny_config(tiny_lm_dir))
    open_gates(plain, 0.3)
    plain.save_pretrained(tmp_path / "plain")
    torch.manual_seed(0)
    wide = build_model(tiny_config(tiny_lm_dir, half_stride_features=True))
    expected = plain.backbone_signature()
    with pytest.raises(ValueError, match="trained for other backbones.*vision_width"):
        wide.load_adapters(tmp_path / "plain" / "adapter.safetensors", expected=expected)
    wide.load_adapters(tmp_path / "plain" / "adapter.safetensors", expected=expected, new_token_channels=True)
    projection = wide.resampler.project.weight
    assert torch.equal(projection[:, : plain.vision.width], plain.resampler.project.weight)
    assert not projection[:, plain.vision.width :].any()
    text, images = ids(plain, "<image> a red button"), images_for(plain, 1)
    torch.testing.assert_close(logits(wide, text, images), logits(plain, text, images), atol=1e-6, rtol=0)

    wide.save_pretrained(tmp_path / "wide")  # the other way round: the saved columns cannot fit
    with pytest.raises(ValueError, match=r"resampler.project.weight: the saved .* cannot start this model's"):
        plain.load_adapters(tmp_path / "wide" / "adapter.safetensors", new_token_channels=True)
    state = load_file(str(tmp_path / "plain" / "adapter.safetensors"))
    del state["resampler.project.weight"]  # no projection to widen: the usual missing-key error
    save_file(state, str(tmp_path / "no-projection.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit this model: missing \['resampler.project.weight'\]"):
        wide.load_adapters(tmp_path / "no-projection.safetensors", new_token_channels=True)


def test_adapters_without_global_latents_start_a_model_with_them_fresh(tiny_lm_dir, tmp_path):
    torch.manual_seed(0)
    grid = dict(num_latents=6, grid_latents=True, resampler_grid_radius=1)
    plain = build_model(tiny_config(tiny_lm_dir, **grid))
    plain.save_pretrained(tmp_path / "plain")
    torch.manual_seed(1)
    with_globals = build_model(tiny_config(tiny_lm_dir, **grid, global_latents=3))
    fresh = with_globals.resampler.global_latents.detach().clone()
    weights = tmp_path / "plain" / "adapter.safetensors"
    with pytest.raises(ValueError, match=r"does not fit this model: missing \['resampler.global_latents'\]"):
        with_globals.load_adapters(weights)
    with_globals.load_adapters(weights, new_global_latents=True)
    assert torch.equal(with_globals.resampler.latents, plain.resampler.latents)
    assert torch.equal(with_globals.resampler.global_latents, fresh)

    with_globals.save_pretrained(tmp_path / "globals")  # the other way round: saved global latents have no place
    with pytest.raises(ValueError, match=r"unexpected \['resampler.global_latents'\]"):
        plain.load_adapters(tmp_path / "globals" / "adapter.safetensors", new_global_latents=True)


def test_adapters_with_fewer_cross_attention_blocks_start_a_deeper_model_unchanged(tiny_lm_dir, tmp_path):
    torch.manual_seed(0)
    upper = build_model(tiny_config(tiny_lm_dir, cross_attn_every_n_layers=1, cross_attn_first_layer=2))
    open_gates(upper, 0.3)
    upper.save_pretrained(tmp_path / "upper")
    torch.manual_seed(0)
    deeper = build_model(tiny_config(tiny_lm_dir, cross_attn_every_n_layers=1))
    weights = tmp_path / "upper" / "adapter.safetensors"
    with pytest.raises(ValueError, match=r"does not fit this model: missing \['cross_attn.0."):
        deeper.load_adapters(weights)
    assert deeper.load_adapters(weights, new_blocks=True) == [0, 1]
    assert torch.equal(deeper.cross_attn["3"].attention_gate, upper.cross_attn["3"].attention_gate)
    assert not deeper.cross_attn["0"].attention_gate.any() and not deeper.cross_attn["1"].ff_gate.any()
    text, images = ids(upper, "<image> a red button"), images_for(upper, 1)
    torch.testing.assert_close(logits(deeper, text, images), logits(upper, text, images), atol=1e-6, rtol=0)

    deeper.save_pretrained(tmp_path / "deeper")  # the other way round: a saved block with no layer to go to
    with pytest.raises(ValueError, match=r"unexpected \['cross_attn.0."):
        upper.load_adapters(tmp_path / "deeper" / "adapter.safetensors", new_blocks=True)
