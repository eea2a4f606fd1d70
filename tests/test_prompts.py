import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_backbones import tiny_tokenizer
from tokenizers import processors

from vlm.prompts import (
    END_OF_CHUNK,
    IGNORE_INDEX,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    Segment,
    caption,
    encode,
    interleaved,
    render_chat,
    sketch_to_html,
    vqa,
)


def make_tokenizer(*, bos: bool = False, chat_template: bool = True):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if bos:  # like Llama: the tokenizer puts BOS before every text it encodes by default
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.eos_token_id)]
        )
    if not chat_template:
        tokenizer.chat_template = None
    return tokenizer


TOKENIZER = make_tokenizer()
IMAGE_ID, EOC_ID = (TOKENIZER.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS)


def text_of(ids, tokenizer=TOKENIZER) -> str:
    return tokenizer.decode(ids)


def target_text(encoded, tokenizer=TOKENIZER) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def joined(segments) -> str:
    return "".join(s.text for s in segments)


@pytest.mark.parametrize(
    "segments, text, target",
    [
        (caption("a cat on a mat "), "<image>Output: a cat on a mat<|endofchunk|>", " a cat on a mat<|endofchunk|>"),
        (caption(), "<image>Output:", ""),
        (vqa(" how many? ", "three"), "<image>Question:how many? Short answer: three<|endofchunk|>",
         " three<|endofchunk|>"),
        (vqa("how many?"), "<image>Question:how many? Short answer:", ""),
        (sketch_to_html("<p>hi</p>"), "<image>HTML: <p>hi</p><|endofchunk|>", " <p>hi</p><|endofchunk|>"),
    ],
)
def test_task_formats(segments, text, target):
    encoded = encode(segments, TOKENIZER, max_length=None)
    assert text_of(encoded.input_ids) == text and target_text(encoded) == target
    assert encoded.num_images == 1 and encoded.input_ids[0] == IMAGE_ID and encoded.labels[0] == IGNORE_INDEX
    assert len(encoded.labels) == len(encoded.input_ids)


def test_labels_are_the_tokens_of_the_target_segments():
    encoded = encode(caption("a dog"), TOKENIZER, max_length=None)
    prompt = encode(caption(), TOKENIZER, max_length=None).input_ids
    assert encoded.input_ids[: len(prompt)] == prompt  # the training context is the inference prompt, token for token
    assert encoded.labels == [IGNORE_INDEX] * len(prompt) + encoded.input_ids[len(prompt) :]
    assert encoded.labels[-1] == EOC_ID


def test_interleaved_closes_each_chunk_after_an_image():
    segments = interleaved(
        [{"text": "intro"}, {"image": "a.jpg"}, {"text": "about a"}, {"text": " more"}, {"image": "b"}, {"image": "c"},
         {"text": "about c"}]
    )
    assert [(s.text, s.target) for s in segments] == [
        ("intro", False),
        (IMAGE_TOKEN, False),
        ("about a", True),
        (" more", True),
        (END_OF_CHUNK, True),
        (IMAGE_TOKEN, False),
        (IMAGE_TOKEN, False),
        ("about c", True),
        (END_OF_CHUNK, True),
    ]
    assert sum(s.is_image for s in segments) == 3
    assert [s.text for s in interleaved([{"image": 1}])] == [IMAGE_TOKEN]


@pytest.mark.parametrize(
    "items, problem",
    [
        ([{"image": "a", "text": "b"}], r"item 0: expected \{'image': ...\} or \{'text': ...\}"),
        ([{"text": "a"}, "b"], "item 1: expected"),
        ([{"text": 3}], "item 0: text must be a string, got int"),
    ],
)
def test_interleaved_names_a_bad_item(items, problem):
    with pytest.raises(ValueError, match=problem):
        interleaved(items)


def test_typed_special_strings_stay_plain_text():
    typed = f"the {IMAGE_TOKEN} tag and {END_OF_CHUNK}{IMAGE_TOKEN}<<image>"
    encoded = encode(vqa(typed, typed), TOKENIZER, max_length=None)
    assert encoded.input_ids.count(IMAGE_ID) == 1 and encoded.input_ids.count(EOC_ID) == 1
    assert text_of(encoded.input_ids) == f"<image>Question:{typed} Short answer: {typed}<|endofchunk|>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([IMAGE_TOKEN, END_OF_CHUNK, "<", "|", ">", "image", "a cat", " ", "\n", "é"])))
def test_any_text_round_trips_without_special_tokens(parts):
    text = "".join(parts)
    encoded = encode([Segment(text, target=True)], TOKENIZER, max_length=None)
    assert IMAGE_ID not in encoded.input_ids and EOC_ID not in encoded.input_ids
    assert text_of(encoded.input_ids) == text and encoded.num_images == 0


def test_segment_checks_its_fields():
    with pytest.raises(ValueError, match="image segment cannot be a target"):
        Segment(IMAGE_TOKEN, special=True, target=True)
    with pytest.raises(ValueError, match="special segment holds one of"):
        Segment("<s>", special=True)
    assert Segment.image().is_image and not Segment(IMAGE_TOKEN).is_image


def test_tokenizer_without_the_special_tokens_is_refused():
    with pytest.raises(ValueError, match=r"no single token for '<image>'; add them first"):
        encode(caption("a cat"), tiny_tokenizer(), max_length=None)


def test_bos_starts_the_sequence_once():
    tokenizer = make_tokenizer(bos=True)
    bos = tokenizer.eos_token_id  # the tiny tokenizer's BOS and EOS are one token
    encoded = encode(caption("a cat"), tokenizer, max_length=None)
    assert encoded.input_ids[:2] == [bos, IMAGE_ID] and encoded.input_ids.count(bos) == 1
    assert encoded.labels[0] == IGNORE_INDEX
    # a chat template that writes BOS itself does not get a second one
    tokenizer.chat_template = "<|endoftext|>" + tokenizer.chat_template
    chat = render_chat([{"role": "user", "content": "hi"}], tokenizer, add_generation_prompt=True)
    assert encode(chat, tokenizer, max_length=None).input_ids.count(bos) == 1


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": f"{IMAGE_TOKEN}what is this?"},
    {"role": "assistant", "content": "a cat"},
    {"role": "user", "content": f"and this {IMAGE_TOKEN}, typed {END_OF_CHUNK}?"},
    {"role": "assistant", "content": "a dog"},
]


def test_chat_with_a_template_marks_assistant_turns_as_targets():
    segments = render_chat(CHAT, TOKENIZER, add_generation_prompt=False)
    assert joined(segments) == TOKENIZER.apply_chat_template(CHAT, tokenize=False)
    assert [s.text for s in segments if s.target] == ["a cat<|im_end|>\n", "a dog<|im_end|>\n"]
    assert [s.text for s in segments if s.special] == [IMAGE_TOKEN, IMAGE_TOKEN]
    # images sit where the user put them
    assert segments[1].is_image and segments[2].text.startswith("what is this?")
    encoded = encode(segments, TOKENIZER, max_length=None)
    assert encoded.num_images == 2 and encoded.input_ids.count(EOC_ID) == 0  # the typed one is plain text
    assert target_text(encoded) == "a cat<|im_end|>\na dog<|im_end|>\n"


def test_chat_generation_prompt_ends_with_the_assistant_cue():
    segments = render_chat(CHAT[:2], TOKENIZER, add_generation_prompt=True)
    assert joined(segments).endswith("<|im_start|>assistant\n") and not any(s.target for s in segments)


def test_chat_template_whose_generation_prompt_adds_text():
    # like Qwen3: the generation prompt opens an empty think block that the rendered answer lacks
    tokenizer = make_tokenizer()
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think></think>{% endif %}"
    )
    segments = render_chat(CHAT, tokenizer, add_generation_prompt=False)
    assert [s.text for s in segments if s.target] == ["a cat<|im_end|>\n", "a dog<|im_end|>\n"]


def test_chat_template_that_is_not_prefix_stable_is_refused():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{{ messages | length }}" + tokenizer.chat_template
    with pytest.raises(ValueError, match="renders messages 0..2 differently inside the whole chat"):
        render_chat(CHAT, tokenizer, add_generation_prompt=False)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ValueError, match="chat template failed on messages 0..4: roles must alternate"):
        render_chat(CHAT, tokenizer, add_generation_prompt=False)


def test_plain_chat_without_a_template():
    tokenizer = make_tokenizer(chat_template=False)
    for source in (tokenizer, None):
        segments = render_chat(CHAT, source, add_generation_prompt=True)
        assert joined(segments) == (
            "System: be brief\nUser: <image>what is this?\nAssistant: a cat<|endofchunk|>\n"
            "User: and this <image>, typed <|endofchunk|>?\nAssistant: a dog<|endofchunk|>\nAssistant:"
        )
    encoded = encode(segments, tokenizer, max_length=None)
    assert target_text(encoded, tokenizer) == " a cat<|endofchunk|> a dog<|endofchunk|>"
    assert encoded.input_ids.count(EOC_ID) == 2 and encoded.num_images == 2


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "at least one message"),
        ([{"role": "bot", "content": "x"}], r"message 0: role must be one of \['assistant', 'system', 'user'\]"),
        ([{"role": "user", "content": [{"type": "text"}]}], "message 0: content must be a string, got list"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "<image>"}], "message 1: an assistant"),
    ],
)
def test_bad_chat_messages_are_named(messages, problem):
    with pytest.raises(ValueError, match=problem):
        render_chat(messages, TOKENIZER, add_generation_prompt=False)


DOCUMENT = interleaved(
    [{"text": "a long preface " * 4}, {"image": 0}, {"text": "first image text"}, {"image": 1}, {"text": "second"}]
)


def test_truncation_cuts_the_preface_before_dropping_an_image():
    full = encode(DOCUMENT, TOKENIZER, max_length=None)
    first_image_at = full.input_ids.index(IMAGE_ID)
    with pytest.warns(UserWarning, match=f"truncating an example of {len(full.input_ids)} tokens to"):
        cut = encode(DOCUMENT, TOKENIZER, max_length=len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[3:] and cut.labels == full.labels[3:]
    assert (cut.num_images, cut.first_image) == (2, 0)
    with pytest.warns(UserWarning, match="from the left$"):
        cut = encode(DOCUMENT, TOKENIZER, max_length=len(full.input_ids) - first_image_at)
    assert cut.input_ids == full.input_ids[first_image_at:] and cut.first_image == 0


def test_truncation_drops_whole_leading_images_with_their_text():
    full = encode(DOCUMENT, TOKENIZER, max_length=None)
    second_image_at = [i for i, t in enumerate(full.input_ids) if t == IMAGE_ID][1]
    with pytest.warns(UserWarning, match="dropping its first 1 image"):
        cut = encode(DOCUMENT, TOKENIZER, max_length=len(full.input_ids) - second_image_at + 2)
    assert cut.input_ids == full.input_ids[second_image_at:]  # not a token of the first image's text is kept
    assert (cut.num_images, cut.first_image) == (1, 1)
    assert text_of(cut.input_ids) == "<image>second<|endofchunk|>"


def test_truncation_keeps_bos():
    tokenizer = make_tokenizer(bos=True)
    full = encode(DOCUMENT, tokenizer, max_length=None)
    with pytest.warns(UserWarning):
        cut = encode(DOCUMENT, tokenizer, max_length=len(full.input_ids) - 2)
    assert cut.input_ids == full.input_ids[:1] + full.input_ids[3:] and cut.labels[0] == IGNORE_INDEX
    tokenizer.chat_template = "<|endoftext|>" + tokenizer.chat_template  # BOS written by the template
    chat = render_chat(CHAT, tokenizer, add_generation_prompt=False)
    full = encode(chat, tokenizer, max_length=None)
    with pytest.warns(UserWarning, match="dropping its first 1 image"):
        cut = encode(chat, tokenizer, max_length=len(full.input_ids) - full.input_ids.index(IMAGE_ID))
    assert cut.input_ids[:2] == [tokenizer.eos_token_id, IMAGE_ID] and cut.first_image == 1


def test_truncation_that_would_split_an_image_from_its_text_raises():
    last = encode(caption("a cat on a mat"), TOKENIZER, max_length=None)
    with pytest.raises(ValueError, match=r"the last image and its text take \d+ tokens"):
        encode(caption("a cat on a mat"), TOKENIZER, max_length=len(last.input_ids) - 1)
    assert encode(caption("a cat on a mat"), TOKENIZER, max_length=len(last.input_ids)) == last
