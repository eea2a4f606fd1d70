"""Special tokens and the text formats that place images in a prompt.

Every format (captions, VQA, sketch-to-HTML, interleaved documents, chat) is built here as a list of
Segments, and `encode` turns segments into token ids and labels. The trainer, the API and eval all go
through these functions, so the prompt at inference is token for token the context seen in training.

Special tokens come only from special Segments (`Segment.image()`, `Segment.end_of_chunk()`), never from
text: a literal "<image>" or "<|endofchunk|>" typed in a caption, a question or a chat message is
tokenized as ordinary characters (see `_split_special_strings`), so data cannot add or remove images.
The one exception is chat content, where "<image>" is how the user places an image.
"""

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass

IMAGE_TOKEN = "<image>"  # marks where an image sits in the text
END_OF_CHUNK = "<|endofchunk|>"  # closes the text that belongs to one image
SPECIAL_TOKENS = (IMAGE_TOKEN, END_OF_CHUNK)

CAPTION_PROMPT = "Output:"  # OpenFlamingo's captioning prompt
VQA_PROMPT = "Question:{question} Short answer:"  # OpenFlamingo's VQA prompt
HTML_PROMPT = "HTML:"  # sketch-to-HTML; tentative, change it here only
CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}  # role -> plain-format name
IGNORE_INDEX = -100  # label of tokens outside the loss, as torch's cross_entropy expects


@dataclass(frozen=True)
class Segment:
    """A run of text, or one special token (IMAGE_TOKEN or END_OF_CHUNK) when `special`."""

    text: str
    _: KW_ONLY
    target: bool = False  # the loss applies to these tokens
    special: bool = False

    def __post_init__(self):
        if self.special and self.text not in SPECIAL_TOKENS:
            raise ValueError(f"a special segment holds one of {SPECIAL_TOKENS}, not {self.text!r}")
        if self.is_image and self.target:
            raise ValueError("an image segment cannot be a target")

    @property
    def is_image(self) -> bool:
        return self.special and self.text == IMAGE_TOKEN

    @classmethod
    def image(cls) -> "Segment":
        """The placeholder for the sample's next image."""
        return cls(IMAGE_TOKEN, special=True)

    @classmethod
    def end_of_chunk(cls, *, target: bool = True) -> "Segment":
        return cls(END_OF_CHUNK, target=target, special=True)


def _answer(text: str | None) -> list[Segment]:
    """The target " {text}<|endofchunk|>", or nothing when building a prompt for generation."""
    if text is None:
        return []
    return [Segment(" " + text.strip(), target=True), Segment.end_of_chunk()]


def caption(text: str | None = None) -> list[Segment]:
    """<image>Output: {text}<|endofchunk|>; without `text`, the prompt to generate one."""
    return [Segment.image(), Segment(CAPTION_PROMPT), *_answer(text)]


def vqa(question: str, answer: str | None = None) -> list[Segment]:
    """<image>Question:{question} Short answer: {answer}<|endofchunk|>; without `answer`, the prompt."""
    return [Segment.image(), Segment(VQA_PROMPT.format(question=question.strip())), *_answer(answer)]


def sketch_to_html(dsl: str | None = None) -> list[Segment]:
    """<image>HTML: {dsl}<|endofchunk|>: a UI sketch to its page DSL (vlm.sketch); without `dsl`, the prompt."""
    return [Segment.image(), Segment(HTML_PROMPT), *_answer(dsl)]


def interleaved(items: Sequence[Mapping]) -> list[Segment]:
    """A document of {"image": ...} and {"text": ...} items, in order (the image values are not read here).

    Text after an image is a target and its chunk is closed with <|endofchunk|> before the next image and at
    the end, as in OpenFlamingo's MMC4 training; text before the first image is context.
    """
    segments, seen_image, chunk_open = [], False, False
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or len({"image", "text"} & set(item)) != 1:
            raise ValueError(f"item {i}: expected {{'image': ...}} or {{'text': ...}}, got {item!r:.80}")
        if "image" in item:
            if chunk_open:
                segments.append(Segment.end_of_chunk())
            segments.append(Segment.image())
            seen_image, chunk_open = True, False
        elif not isinstance(item["text"], str):
            raise ValueError(f"item {i}: text must be a string, got {type(item['text']).__name__}")
        elif item["text"]:
            segments.append(Segment(item["text"], target=seen_image))
            chunk_open = seen_image
    if chunk_open:
        segments.append(Segment.end_of_chunk())
    return segments


def check_messages(messages: Sequence[Mapping]) -> None:
    """Raise ValueError naming the first malformed message of a chat."""
    if not messages:
        raise ValueError("a chat needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {message!r:.80}")
        if not isinstance(message.get("role"), str) or message["role"] not in CHAT_ROLES:
            raise ValueError(f"message {i}: role must be one of {sorted(CHAT_ROLES)}, got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be a string, got {type(message.get('content')).__name__}")
        if message["role"] == "assistant" and IMAGE_TOKEN in message["content"]:
            raise ValueError(f"message {i}: an assistant message cannot hold {IMAGE_TOKEN}")


def render_chat(messages: Sequence[Mapping], tokenizer, *, add_generation_prompt: bool) -> list[Segment]:
    """A conversation as segments: assistant turns are targets, each "<image>" in a message is an image.

    Uses the tokenizer's chat template when it has one (tokenizer may be None), else "User: ...\\n" lines
    with assistant answers closed by <|endofchunk|>. `add_generation_prompt` ends with the assistant's cue.
    """
    check_messages(messages)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return _plain_chat(messages, add_generation_prompt)
    return _templated_chat(messages, tokenizer, add_generation_prompt)


def _with_images(text: str) -> list[Segment]:
    """Context text with each IMAGE_TOKEN turned into an image segment."""
    segments = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            segments.append(Segment.image())
        if piece:
            segments.append(Segment(piece))
    return segments


def _plain_chat(messages: Sequence[Mapping], add_generation_prompt: bool) -> list[Segment]:
    segments = []
    for message in messages:
        name = CHAT_ROLES[message["role"]]
        if message["role"] == "assistant":
            segments += [Segment(f"{name}:"), *_answer(message["content"]), Segment("\n")]
        else:
            segments += _with_images(f"{name}: {message['content']}\n")
    if add_generation_prompt:
        segments.append(Segment(f"{CHAT_ROLES['assistant']}:"))
    return segments


def _templated_chat(messages: Sequence[Mapping], tokenizer, add_generation_prompt: bool) -> list[Segment]:
    # A template is opaque text, so find each assistant turn by rendering the conversation prefix by prefix:
    # the turn is what rendering message i adds to the render of messages[:i] with its generation prompt.
    def render(part, generation_prompt):
        try:
            return tokenizer.apply_chat_template(
                [dict(m) for m in part], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # jinja raises TemplateError, templates raise_exception() on role order
            raise ValueError(f"the chat template failed on messages 0..{len(part) - 1}: {e}") from e

    full = render(messages, add_generation_prompt)
    segments, position = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = render(messages[: i + 1], False)
        if not full.startswith(through):
            raise ValueError(f"the chat template renders messages 0..{i} differently inside the whole chat")
        # the common prefix, not the prompt itself: some templates' generation prompt adds text the
        # rendered turn lacks (an empty <think> block, say)
        start = len(os.path.commonprefix([render(messages[:i], True), through]))
        if start < position:
            raise ValueError(f"message {i}: the chat template's turns overlap; cannot find the answer")
        segments += [*_with_images(full[position:start]), Segment(full[start : len(through)], target=True)]
        position = len(through)
    segments += _with_images(full[position:])
    expected = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if sum(s.is_image for s in segments) != expected:
        raise ValueError(f"the chat template changed the number of {IMAGE_TOKEN} markers (expected {expected})")
    return segments


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # the token itself where the loss applies, else IGNORE_INDEX (the model shifts them)
    num_images: int  # image tokens in input_ids
    first_image: int = 0  # index of the example's first image still present after left truncation


def encode(segments: Sequence[Segment], tokenizer, *, max_length: int | None) -> EncodedExample:
    """Token ids and labels for `segments`, each text segment tokenized on its own.

    Separate tokenization keeps every context/target boundary a token boundary, as at inference, where the
    prompt is tokenized alone and the answer generated after it. The tokenizer's leading special tokens
    (BOS) start the sequence unless the text already starts with them (a chat template may write BOS).

    Longer than `max_length`: cut from the left with a warning, never between an image and its text.
    Text before the first image may be cut anywhere; past it, whole leading images go with their text
    (`first_image` says which image comes first). ValueError if the last image with its text cannot fit.
    """
    special_ids = {token: special_token_id(tokenizer, token) for token in SPECIAL_TOKENS}
    ids, labels, image_starts = [], [], []
    for segment in segments:
        if segment.special:
            if segment.is_image:
                image_starts.append(len(ids))
            piece = [special_ids[segment.text]]
        else:
            parts = _split_special_strings(segment.text)
            piece = [i for part in parts for i in tokenizer.encode(part, add_special_tokens=False)]
        ids += piece
        labels += piece if segment.target else [IGNORE_INDEX] * len(piece)

    lead = leading_special_ids(tokenizer)
    if lead and ids[: len(lead)] == lead:  # a chat template wrote BOS itself: keep that one, through truncation
        del ids[: len(lead)], labels[: len(lead)]
        image_starts = [start - len(lead) for start in image_starts]
    first_image = 0
    if max_length is not None and len(lead) + len(ids) > max_length:
        budget = max_length - len(lead)
        if budget <= 0:
            raise ValueError(f"max_length={max_length} leaves no room after {len(lead)} leading special tokens")
        cut = len(ids) - budget  # tokens that must go
        if image_starts and cut > image_starts[0]:
            first_image = next((k for k, start in enumerate(image_starts) if start >= cut), None)
            if first_image is None:
                raise ValueError(
                    f"cannot fit {len(lead) + len(ids)} tokens into max_length={max_length} without cutting "
                    f"into an image's text: the last image and its text take {len(ids) - image_starts[-1]} tokens"
                )
            cut = image_starts[first_image]
        dropped = f", dropping its first {first_image} image(s)" if first_image else ""
        total = len(lead) + len(ids)
        warnings.warn(f"truncating an example of {total} tokens to {max_length} from the left{dropped}", stacklevel=2)
        ids, labels, image_starts = ids[cut:], labels[cut:], image_starts[first_image:]
        image_starts = [start - cut for start in image_starts]
    return EncodedExample(
        input_ids=lead + ids,
        labels=[IGNORE_INDEX] * len(lead) + labels,
        num_images=len(image_starts),
        first_image=first_image,
    )


def _split_special_strings(text: str) -> list[str]:
    """Cut `text` right after the "<" of each literal special string, so no piece holds a whole one.

    Each piece is tokenized on its own, so the tokenizer cannot match "<image>" and gives ordinary
    character tokens instead; decoding the ids still gives back the exact text.
    """
    cuts = [match.start() + 1 for match in _SPECIAL_STRINGS.finditer(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


_SPECIAL_STRINGS = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))


def special_token_id(tokenizer, token: str) -> int:
    """The single id of one of SPECIAL_TOKENS, or a ValueError saying how to add them."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the tokenizer has no single token for {token!r}; add them first with "
            "tokenizer.add_special_tokens({'additional_special_tokens': list(SPECIAL_TOKENS)})"
        )
    return ids[0]


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text by default (BOS for Llama-style tokenizers, none for GPT-2)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    return []
