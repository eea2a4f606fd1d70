"""The Python API on a tiny random model saved to a folder and loaded back with vlm.load."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_model import open_gates, tiny_config
from tiny_backbones import save_tiny_lm
from transformers import AutoModelForCausalLM

import vlm
from vlm import api, generation
from vlm.images import ImageError
from vlm.model import build_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved model whose LM writes varied text (the tiny LM's 0.02 init repeats one token) and whose images matter."""
    lm_dir = save_tiny_lm("llama", tmp_path_factory.mktemp("tiny-llama"))
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    lm.save_pretrained(lm_dir)
    torch.manual_seed(0)
    model = build_model(tiny_config(lm_dir))
    open_gates(model, 1.0)
    return model.save_pretrained(tmp_path_factory.mktemp("run") / "tiny"), model


@pytest.fixture(scope="module")
def run_dir(saved):
    return saved[0]


@pytest.fixture(scope="module")
def model(run_dir):
    torch.manual_seed(0)  # the tiny vision tower is random: rebuild the one the adapters were saved with
    return vlm.load(run_dir, generation_config=vlm.GenerationConfig(max_new_tokens=16))


def picture(seed: int) -> Image.Image:
    """Blocks of colour: pictures that differ in layout, not only in noise."""
    cells = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((64, 48), Image.Resampling.NEAREST)


def test_load_rebuilds_the_saved_model(model, saved):
    assert isinstance(model, vlm.VLM)
    original = vlm.VLM(saved[1], generation_config=model.generation_config)
    assert model.caption(picture(0)) == original.caption(picture(0))


def test_images_may_be_pil_images_paths_bytes_or_arrays(model, tmp_path):
    image = picture(1)
    image.save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    captions = {model.caption(source) for source in (image, tmp_path / "a.png", str(tmp_path / "a.png"), png, np.asarray(image))}
    assert len(captions) == 1 and captions.pop()


def test_a_batch_gives_the_answers_of_one_by_one(model):
    images = [picture(i) for i in range(3)]
    captions = model.caption(images)
    assert captions == [model.caption(image) for image in images]
    assert len(set(captions)) > 1  # the images change the text
    questions = ["how many buttons are there?", "what is this?", "is it red?"]
    assert model.ask(images, questions) == [model.ask(i, q) for i, q in zip(images, questions)]


def test_a_few_shot_prompt_masks_each_example_to_its_own_image(model):
    prompt = "<image>Output: a cat<|endofchunk|><image>Output: a red button<|endofchunk|><image>Output:"
    images = [picture(i) for i in range(3)]
    inputs = model.prepare([(api.interleaved_prompt(prompt), images)], max_new_tokens=8)
    ids = inputs.input_ids[0]
    markers = (ids == model.model.image_token_id).nonzero()[:, 0].tolist()
    ends = (ids == model.model.end_of_chunk_id).nonzero()[:, 0].tolist()
    assert len(markers) == 3 and len(ends) == 2 and markers[0] == 0
    spans = [range(markers[0], markers[1]), range(markers[1], markers[2]), range(markers[2], len(ids))]

    # the lowest cross-attention block's input is image-free, so its output shows what each token attends to
    block = model.model.cross_attn[str(model.model.cross_attn_layers[0])]
    captured = {}
    handle = block.register_forward_hook(lambda module, args, output: captured.update(out=output[0]))
    with torch.no_grad():
        model.model(inputs.input_ids, pixel_values=inputs.pixel_values)
        base = captured["out"]
        for k in range(3):
            changed = inputs.pixel_values.clone()
            changed[0, k] = model.model.vision.preprocess(picture(10 + k))
            model.model(inputs.input_ids, pixel_values=changed)
            moved = (captured["out"] - base).abs().amax(-1) > 1e-5  # (t,)
            assert moved.nonzero()[:, 0].tolist() == list(spans[k])
    handle.remove()
    answer = model.generate(prompt, images=images, max_new_tokens=8)
    assert answer == "".join(model.generate(prompt, images=images, max_new_tokens=8, stream=True))
    assert model.generate([prompt, prompt], images=[images, images], max_new_tokens=8) == [answer, answer]


def test_chat_takes_images_in_the_content_string_or_as_parts(model):
    image = picture(2)
    as_string = [{"role": "user", "content": "What is <image> this?", "images": [image]}]
    as_parts = [{"role": "user", "content": [
        {"type": "text", "text": "What is "}, {"type": "image", "image": image}, {"type": "text", "text": " this?"}
    ]}]
    answer = model.chat(as_string, max_new_tokens=10)
    assert answer and model.chat(as_parts, max_new_tokens=10) == answer
    assert "".join(model.chat(as_parts, max_new_tokens=10, stream=True)) == answer
    # the chat template places the image where the user put it
    segments = api.prompts.render_chat(api.chat_messages(as_parts)[0], model.model.tokenizer, add_generation_prompt=True)
    text = model.model.tokenizer.decode(model.prepare([(segments, [image])], max_new_tokens=10).input_ids[0])
    assert text == "<|im_start|>user\nWhat is <image> this?<|im_end|>\n<|im_start|>assistant\n"
    # an image given without a marker comes before the text
    first = [{"role": "user", "content": "What is this?", "images": [image]}]
    assert model.chat(first, max_new_tokens=10) == model.chat([{"role": "user", "content": "<image>What is this?", "images": [image]}], max_new_tokens=10)


def test_a_chat_answer_ends_at_the_templates_end_of_turn(model):
    tokenizer = model.model.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "<image> what is this?", "images": [picture(3)]}]
    free = model.chat(messages, max_new_tokens=6)
    calls = []

    def end_turn_from_the_third_token(module, args, logits):
        calls.append(1)
        if len(calls) >= 3:
            logits[..., end] += 1e4
        return logits

    handle = model.model.lm.get_output_embeddings().register_forward_hook(end_turn_from_the_third_token)
    answer = model.chat(messages, max_new_tokens=6)
    calls.clear()
    prompt = tokenizer.decode(model.prepare([(api.prompts.render_chat(messages, tokenizer, add_generation_prompt=True), [picture(3)])], max_new_tokens=6).input_ids[0])
    raw = model.generate(prompt, images=[picture(3)], max_new_tokens=4)
    handle.remove()
    assert "<|im_end|>" in raw  # without the chat's stop string the model writes past the end of the turn
    assert "<|im_end|>" not in answer and free.startswith(answer) and len(answer) < len(free)


def test_a_stop_string_ends_the_answer_and_is_cut_from_it(model):
    for run in (lambda **o: model.caption(picture(4), **o), lambda **o: model.ask(picture(4), "what is this?", **o)):
        text = run(max_new_tokens=12)
        # two characters from the middle of the text; U+FFFD (a partly decoded byte sequence) would move
        stop = next(text[i : i + 2] for i in range(3, len(text)) if not set(text[i : i + 2]) & {"\ufffd", " "})
        cut = run(max_new_tokens=12, stop_strings=[stop])
        assert cut == text[: text.index(stop)].strip()


def test_sketch_to_html_always_returns_a_page(model):
    with pytest.warns(UserWarning, match="does not parse"):  # free to write any text, a random model writes no DSL
        page = model.sketch_to_html(picture(5), max_new_tokens=8, allowed_words=())
    assert page.startswith("<!DOCTYPE html>") and "<pre>" in page
    with warnings.catch_warnings(record=True):  # DSL words only, but 8 tokens may leave a brace open
        assert model.sketch_to_html(picture(5), max_new_tokens=8).startswith("<!DOCTYPE html>")
    assert model._dsl_words  # this tokenizer writes a run of words word by word


def test_sketch_to_html_decodes_freely_where_the_tokenizer_cannot_be_steered_by_words(model, monkeypatch):
    monkeypatch.setattr(generation, "tokenizes_word_by_word", lambda tokenizer, words: False)
    unsteered = api.VLM(model.model, generation_config=model.generation_config)
    assert unsteered._dsl_words == ()
    with pytest.warns(UserWarning, match="does not parse"):  # free text from a random model, not an error
        unsteered.sketch_to_html(picture(5), max_new_tokens=8)
    page = api.dsl_to_html("header { btn-active, btn-inactive } row { single { small-title, text } }")
    assert page.startswith("<!DOCTYPE html>") and 'class="header' in page
    with pytest.warns(UserWarning):
        assert "&lt;script&gt;" in api.dsl_to_html("<script>alert(1)</script>")  # the model's text is escaped


def test_bfloat16_runs_the_model_in_bf16_and_keeps_rotary_tables_in_float32(run_dir):
    torch.manual_seed(0)
    model = vlm.load(run_dir, dtype="bfloat16")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    assert model.model.lm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert isinstance(model.caption(picture(6), max_new_tokens=6), str)


def test_load_without_default_weights_says_how_to_pass_a_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"default weights are not installed.*vlm.load\('runs/my-run'\)"):
        vlm.load()


def test_bad_input_is_a_clear_error(model, run_dir):
    with pytest.raises(ValueError, match="has 2 <image> markers but 1 images"):
        model.generate("<image> a <image> b", images=[picture(0)])
    with pytest.raises(ValueError, match="one image and one question, or equally long lists"):
        model.ask([picture(0), picture(1)], "what?")
    with pytest.raises(ValueError, match="a content part is"):
        model.chat([{"role": "user", "content": [{"type": "video", "video": "x"}]}])
    with pytest.raises(TypeError, match="unknown generation option"):
        model.caption(picture(0), max_tokens=3)
    with pytest.raises(ValueError, match="dtype must be one of"):
        vlm.load(run_dir, dtype="int8")
    with pytest.raises(ImageError, match="empty"):
        model.caption(b"")
