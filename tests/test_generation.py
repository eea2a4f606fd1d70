"""Decoding on tiny random models: the cache, batching, beams, sampling, stops, streaming, media reuse."""

import pytest
import torch
from test_model import images_for, open_gates, tiny_config

from vlm.cross_attention import MaskedCrossAttention
from vlm.generation import (GenerationConfig, decode_text, generate, left_pad, stop_token_ids, stream,
                            tokenizes_word_by_word)
from vlm.model import build_model
from vlm.vision import VisionEncoder

PROMPTS = ["a photo <image> of a", "<image> the quick brown <image> fox", "Question: how many"]
IMAGES = [1, 2, 0]


@pytest.fixture
def model(tiny_lm_dir):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_lm_dir)).eval()
    open_gates(model, 0.5)  # images change the text
    with torch.no_grad():
        # The tiny LMs' 0.02 init gives near-uniform logits that repeat one token; wider weights give varied text.
        generator = torch.Generator().manual_seed(0)
        for p in model.lm.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


def prompt(model, i):
    """Prompt i alone: input_ids (1, t) and its images (1, m, 3, h, w) or None."""
    ids = torch.tensor([model.tokenizer.encode(PROMPTS[i], add_special_tokens=False)])
    return ids, images_for(model, IMAGES[i], seed=i) if IMAGES[i] else None


def batch(model):
    """All prompts, left-padded, with their images zero-padded to the most of any prompt."""
    rows = [prompt(model, i) for i in range(len(PROMPTS))]
    input_ids, attention_mask = left_pad([ids[0].tolist() for ids, _ in rows], pad_id=model.tokenizer.pad_token_id)
    pixel_values = torch.zeros(len(rows), max(IMAGES), 3, *model.vision.image_size)
    for i, (_, images) in enumerate(rows):
        if images is not None:
            pixel_values[i, : images.shape[1]] = images[0]
    return input_ids, attention_mask, pixel_values


def greedy_without_cache(model, input_ids, pixel_values, steps):
    """The reference: rerun the whole sequence for every new token."""
    tokens, stops = [], stop_token_ids(model)
    with torch.no_grad():
        for _ in range(steps):
            logits = model.logits(model(input_ids, pixel_values=pixel_values)["hidden"][:, -1])
            logits[:, model.image_token_id] = float("-inf")
            token = int(logits.argmax(-1))
            if token in stops:
                break
            tokens.append(token)
            input_ids = torch.cat([input_ids, torch.tensor([[token]])], dim=1)
    return tokens


def test_greedy_with_the_cache_gives_the_tokens_of_full_recomputation(model):
    for i in range(len(PROMPTS)):
        input_ids, pixel_values = prompt(model, i)
        tokens = generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=12))[0]
        assert tokens == greedy_without_cache(model, input_ids, pixel_values, 12)
        assert len(set(tokens)) > 2  # varied text, so the comparison means something


def test_a_left_padded_batch_gives_the_tokens_of_each_prompt_alone(model):
    input_ids, attention_mask, pixel_values = batch(model)
    assert not attention_mask.all()  # the prompts really differ in length
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=12, num_beams=3)):
        together = generate(model, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, config=config)
        alone = [generate(model, ids, pixel_values=images, config=config)[0] for ids, images in (prompt(model, i) for i in range(3))]
        assert together == alone


def test_beam_search_of_width_one_is_greedy(model):
    input_ids, attention_mask, pixel_values = batch(model)
    for repetition_penalty in (1.0, 1.5):
        config = GenerationConfig(max_new_tokens=10, repetition_penalty=repetition_penalty)
        kwargs = {"attention_mask": attention_mask, "pixel_values": pixel_values}
        assert generate(model, input_ids, config=config.replace(num_beams=1), **kwargs) == generate(
            model, input_ids, config=config, **kwargs
        )


def test_beam_search_matches_hugging_face_on_text(model):
    # With no image our model is the bare LM; special tokens with zero embeddings never win over its logits.
    with torch.no_grad():
        model.special_embeddings.zero_()
    eos = model.tokenizer.eos_token_id
    for text in ("a photo of", "the quick brown fox"):
        input_ids = torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])
        for num_beams, length_penalty in ((3, 1.0), (4, 0.5)):
            ours = generate(model, input_ids, config=GenerationConfig(max_new_tokens=10, num_beams=num_beams, length_penalty=length_penalty))[0]
            theirs = model.lm.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), num_beams=num_beams, length_penalty=length_penalty,
                do_sample=False, early_stopping=False, max_new_tokens=10, pad_token_id=eos,
            )[0, input_ids.shape[1] :].tolist()
            assert ours == (theirs[: theirs.index(eos)] if eos in theirs else theirs)


def test_images_are_encoded_and_their_keys_values_computed_once_per_call(model, monkeypatch):
    calls = {"vision": 0, "keys_values": 0}

    def counting(name, method):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(VisionEncoder, "forward", counting("vision", VisionEncoder.forward))
    monkeypatch.setattr(MaskedCrossAttention, "media_keys_values", counting("keys_values", MaskedCrossAttention.media_keys_values))
    input_ids, attention_mask, pixel_values = batch(model)
    for num_beams in (1, 3):
        calls.update(vision=0, keys_values=0)
        config = GenerationConfig(max_new_tokens=8, num_beams=num_beams)
        tokens = generate(model, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, config=config)
        assert max(len(t) for t in tokens) > 1  # several decoding steps ran
        assert calls == {"vision": 1, "keys_values": len(model.cross_attn)}


def test_the_stream_joins_to_the_text(model):
    for i in range(len(PROMPTS)):
        input_ids, pixel_values = prompt(model, i)
        for config in (GenerationConfig(max_new_tokens=16), GenerationConfig(max_new_tokens=16, stop_strings=("a",))):
            tokens = generate(model, input_ids, pixel_values=pixel_values, config=config)[0]
            pieces = list(stream(model, input_ids, pixel_values=pixel_values, config=config))
            assert "".join(pieces) == decode_text(model.tokenizer, tokens, config.stop_strings)
    assert len(pieces) > 1


def test_a_stop_string_ends_generation_and_is_not_returned(model):
    input_ids, pixel_values = prompt(model, 1)
    full = generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=16))[0]
    text = decode_text(model.tokenizer, full)
    stop = next(piece for piece in (model.tokenizer.decode([t]).strip() for t in full[3:]) if piece and "\ufffd" not in piece)
    config = GenerationConfig(max_new_tokens=16, stop_strings=(stop,))
    tokens = generate(model, input_ids, pixel_values=pixel_values, config=config)[0]
    assert len(tokens) < len(full) and tokens == full[: len(tokens)]
    cut = decode_text(model.tokenizer, tokens, config.stop_strings)
    assert stop not in cut and cut == text[: text.index(stop)].strip()
    assert "".join(stream(model, input_ids, pixel_values=pixel_values, config=config)) == cut


def test_generation_stops_at_an_end_of_sequence_token(model):
    input_ids, pixel_values = prompt(model, 0)
    full = generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=12))[0]
    model.lm.generation_config.eos_token_id = full[3]  # the LM's own end-of-sequence ids are stop tokens
    config = GenerationConfig(max_new_tokens=12)
    assert generate(model, input_ids, pixel_values=pixel_values, config=config)[0] == full[: full.index(full[3])]
    longer = generate(model, input_ids, pixel_values=pixel_values, config=config.replace(min_new_tokens=8))[0]
    assert len(longer) >= 8 and full[3] not in longer[:8]


def test_end_of_chunk_stops_and_image_markers_are_never_generated(model):
    input_ids, pixel_values = prompt(model, 0)
    # push every LM token far down: only <image> and <|endofchunk|> are left to choose from
    handle = model.lm.get_output_embeddings().register_forward_hook(lambda module, args, out: out - 1e4)
    row = model.special_embeddings.data[0].clone()
    for sign in (1, -1):  # one of the two gives <image> the higher logit
        model.special_embeddings.data[0], model.special_embeddings.data[1] = sign * row, -sign * row
        assert generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=4)) == [[]]
    handle.remove()


def test_sampling_is_seeded_and_its_limits_reduce_to_greedy(model):
    input_ids, attention_mask, pixel_values = batch(model)
    kwargs = {"attention_mask": attention_mask, "pixel_values": pixel_values}
    greedy = generate(model, input_ids, config=GenerationConfig(max_new_tokens=10), **kwargs)
    sampled = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, seed=3)
    first = generate(model, input_ids, config=sampled, **kwargs)
    assert first == generate(model, input_ids, config=sampled, **kwargs)
    assert first != greedy
    assert generate(model, input_ids, config=sampled.replace(top_k=1), **kwargs) == greedy
    assert generate(model, input_ids, config=sampled.replace(top_p=1e-6), **kwargs) == greedy


def test_a_strong_repetition_penalty_avoids_every_token_already_seen(model):
    input_ids, pixel_values = prompt(model, 1)
    plain = generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=12))[0]
    assert len(set(plain)) < len(plain)  # without a penalty the tiny model repeats itself
    tokens = generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(max_new_tokens=12, repetition_penalty=100.0))[0]
    assert len(set(tokens)) == len(tokens) and not set(tokens) & set(input_ids[0].tolist())


def test_bad_options_and_inputs_are_clear_errors(model):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GenerationConfig(temperature=0)
    with pytest.raises(ValueError, match="beam search does not sample"):
        GenerationConfig(do_sample=True, num_beams=2)
    with pytest.raises(TypeError, match="unknown generation option.*max_tokens"):
        GenerationConfig().replace(max_tokens=3)
    input_ids, _ = prompt(model, 0)
    with pytest.raises(ValueError, match="1 <image> markers but pixel_values hold 0 images"):
        generate(model, input_ids)
    with pytest.raises(ValueError, match="the prompt has 300 tokens; the LM takes at most 256"):
        generate(model, torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match="stream takes one prompt"):
        next(stream(model, torch.zeros(2, 3, dtype=torch.long)))


DSL_WORDS = ("header", "btn-inactive", "btn-active", "row", "quadruple", "small-title", "{", "}", ",")


def test_with_allowed_words_the_output_is_those_words_each_after_a_space(model):
    input_ids, attention_mask, pixel_values = batch(model)
    configs = [GenerationConfig(max_new_tokens=40, min_new_tokens=40, allowed_words=DSL_WORDS, **options)
               for options in ({}, {"do_sample": True, "seed": 0}, {"num_beams": 3})]
    unconstrained = generate(model, input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                             config=GenerationConfig(max_new_tokens=24, min_new_tokens=24))
    assert not all(set(decode_text(model.tokenizer, t).split()) <= set(DSL_WORDS) for t in unconstrained)
    for config in configs:
        rows = generate(model, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, config=config)
        for tokens in rows:
            text = model.tokenizer.decode(tokens)
            *words, last = text.split(" ")[1:]  # the text starts with a space
            assert len(words) >= 3 and set(words) <= set(DSL_WORDS), text
            assert any(word.startswith(last) for word in DSL_WORDS), text  # max_new_tokens may cut the last word


def test_one_prompt_jumps_over_the_tokens_a_word_decides_to_the_tokens_of_a_batch(model, monkeypatch):
    # alone, a prompt feeds the rest of a word with its first token in one forward pass; in a batch every
    # token is a step of its own: the same tokens, in fewer passes
    config = GenerationConfig(max_new_tokens=30, min_new_tokens=30, allowed_words=DSL_WORDS)
    input_ids, attention_mask, pixel_values = batch(model)
    together = generate(model, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, config=config)
    passes = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: passes.append(1) or forward(self, *a, **k))
    for i in range(len(PROMPTS)):
        passes.clear()
        ids, images = prompt(model, i)
        alone = generate(model, ids, pixel_values=images, config=config)[0]
        assert alone == together[i]
        assert len(passes) < len(alone)  # the prompt's pass and one per picked token, forced ones riding along


def test_allowed_words_must_be_words():
    with pytest.raises(ValueError, match="allowed_words must be a list of words, not one string"):
        GenerationConfig(allowed_words="header")
    with pytest.raises(ValueError, match="allowed_words must be words: non-empty strings without spaces"):
        GenerationConfig(allowed_words=["header", "two words"])


def test_a_tokenizer_that_writes_words_otherwise_in_a_run_is_a_clear_error(model, monkeypatch):
    # as SentencePiece starts every text with a lone marker: " a" alone is [marker, a], " a b" is [marker, a, b]
    monkeypatch.setattr(model.tokenizer, "encode", lambda text, add_special_tokens=False: [0] + [len(w) for w in text.split()])
    assert not tokenizes_word_by_word(model.tokenizer, DSL_WORDS)
    input_ids, pixel_values = prompt(model, 0)
    with pytest.raises(ValueError, match="allowed_words: this tokenizer writes a run of these words in other tokens"):
        generate(model, input_ids, pixel_values=pixel_values, config=GenerationConfig(allowed_words=DSL_WORDS))
