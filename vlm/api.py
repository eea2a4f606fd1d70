"""The Python API: load a trained model, then caption, ask, chat, few-shot and sketch-to-HTML with it.

    import vlm
    model = vlm.load()                       # the default model shipped in vlm/weights/default
    model.caption("photo.jpg")               # images: PIL, path, bytes or numpy array
    model.ask(image, "How many buttons are there?")
    for piece in model.chat([{"role": "user", "content": "What is this? <image>", "images": [image]}], stream=True):
        print(piece, end="")

Every prompt goes through vlm.prompts, so it is token for token the context the model was trained on.
"""

import functools
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import torch

from vlm import generation, prompts
from vlm.generation import GenerationConfig
from vlm.images import ImageSource, load_image
from vlm.model import CONFIG_FILE, VisionLanguageModel
from vlm.prompts import END_OF_CHUNK, IMAGE_TOKEN, Segment

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "default"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HTML_MAX_NEW_TOKENS = 512  # a page's DSL is longer than a caption


def load(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    generation_config: GenerationConfig | None = None,
) -> "VLM":
    """Load a saved model folder (adapter.safetensors + config.json); None: the default model.

    dtype "bfloat16" runs the whole model in bf16: half the memory, and a faster prompt (first token) on
    CPUs with AVX-512 BF16 or AMX (README.md, "Python API", has measured figures).
    """
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"the default weights are not installed ({path} has no {CONFIG_FILE}); "
                "pass a trained model folder instead, e.g. vlm.load('runs/my-run')"
            )
    name = dtype if isinstance(dtype, str) else next((n for n, d in DTYPES.items() if d == dtype), None)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[name]
    # The LM loads in `dtype` through Hugging Face, which keeps its rotary tables in float32; a
    # plain .to(dtype) would round them. Everything else is cast here.
    model = VisionLanguageModel.from_pretrained(path, lm_dtype=name)
    for child_name, child in model.named_children():
        if child_name != "lm":
            child.to(dtype)
    model.special_embeddings.data = model.special_embeddings.data.to(dtype)
    return VLM(model.to(device).eval(), generation_config=generation_config)


@dataclass
class Inputs:
    """A left-padded batch of prompts with their images, ready for vlm.generation."""

    input_ids: torch.Tensor  # (b, t)
    attention_mask: torch.Tensor  # (b, t)
    pixel_values: torch.Tensor | None  # (b, m, 3, h, w), m the most images of any prompt; zeros pad


class VLM:
    """A VisionLanguageModel with generation defaults and a method per task.

    Methods that take one image (or prompt) return a string; given a list they run it as one batch and
    return a list. Keyword options are GenerationConfig fields (max_new_tokens, num_beams, stop_strings, ...).
    """

    def __init__(self, model: VisionLanguageModel, *, generation_config: GenerationConfig | None = None):
        self.model = model.eval()
        self.generation_config = generation_config or GenerationConfig()

    def caption(self, image: ImageSource | Sequence[ImageSource], **options) -> str | list[str]:
        images, batched = _as_batch(image)
        texts = self._complete([(prompts.caption(), [i]) for i in images], options)
        return texts if batched else texts[0]

    def ask(self, image: ImageSource | Sequence[ImageSource], question: str | Sequence[str], **options) -> str | list[str]:
        images, batched = _as_batch(image)
        questions = [question] if isinstance(question, str) else list(question)
        if len(questions) != len(images) or isinstance(question, str) == batched:
            raise ValueError("ask takes one image and one question, or equally long lists of both")
        texts = self._complete([(prompts.vqa(q), [i]) for i, q in zip(images, questions)], options)
        return texts if batched else texts[0]

    def sketch_to_html(self, image: ImageSource | Sequence[ImageSource], **options) -> str | list[str]:
        """A UI sketch -> an HTML page: the model writes the page DSL, which vlm.sketch compiles.

        Decoding keeps to the DSL's words (allowed_words), which also lets one sketch skip the forward passes of
        a word's tokens its start decides; allowed_words=() lets the model write any text, as it does with an
        LM whose tokenizer writes a run of words otherwise than word by word.
        """
        images, batched = _as_batch(image)
        options = {"max_new_tokens": HTML_MAX_NEW_TOKENS, "allowed_words": self._dsl_words, **options}
        pages = [dsl_to_html(dsl) for dsl in self._complete([(prompts.sketch_to_html(), [i]) for i in images], options)]
        return pages if batched else pages[0]

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        images: Sequence[ImageSource] | Sequence[Sequence[ImageSource]] = (),
        stream: bool = False,
        **options,
    ) -> str | list[str] | Iterator[str]:
        """Continue an interleaved prompt: each `<image>` stands for the next of `images`.

        Few-shot: "<image>Output: a cat<|endofchunk|><image>Output: a dog<|endofchunk|><image>Output:"
        with three images; each example's text sees only its own image. A list of prompts (with a list of
        image lists) runs as one batch, as vlm.eval's runners call it.
        """
        if isinstance(prompt, str):
            examples = [(interleaved_prompt(prompt), list(images))]
        else:
            image_lists = list(images) or [[] for _ in prompt]
            if len(image_lists) != len(prompt):
                raise ValueError(f"{len(prompt)} prompts but {len(image_lists)} image lists")
            examples = [(interleaved_prompt(p), list(i)) for p, i in zip(prompt, image_lists)]
        if stream:
            if not isinstance(prompt, str):
                raise ValueError("stream=True takes one prompt, not a list")
            return self._stream(examples[0], options)
        texts = self._complete(examples, options)
        return texts[0] if isinstance(prompt, str) else texts

    def chat(self, messages: Sequence[Mapping], *, stream: bool = False, **options) -> str | Iterator[str]:
        """The assistant's next turn. A message is {"role", "content"} where content is a string with
        "<image>" where each of the message's "images" goes (none: they go first), or a list of parts
        {"type": "text", "text": ...} and {"type": "image", "image": ...}, as OpenAI and Hugging Face write them.
        """
        plain, images = chat_messages(messages)
        segments = prompts.render_chat(plain, self.model.tokenizer, add_generation_prompt=True)
        end = end_of_turn(self.model.tokenizer)
        if end is not None:  # the template's end of an assistant turn ends the answer
            config = self.generation_config.replace(**options)
            options = {**options, "stop_strings": (*config.stop_strings, end)}
        if stream:
            return self._stream((segments, images), options)
        return self._complete([(segments, images)], options)[0]

    @functools.cached_property
    def _dsl_words(self) -> tuple[str, ...]:
        """The page DSL's words for sketch_to_html's decoding, or () where the tokenizer cannot be steered by them."""
        from vlm.sketch.dsl import WORDS  # lazy: the sketch tooling is only needed here

        return WORDS if generation.tokenizes_word_by_word(self.model.tokenizer, WORDS) else ()

    # --- prompts to tensors to text ----------------------------------------------------------
    def prepare(self, examples: Sequence[tuple[Sequence[Segment], Sequence[ImageSource]]], *, max_new_tokens: int) -> Inputs:
        """(segments, images) per prompt -> a left-padded batch. A prompt is cut from the left to leave room
        for max_new_tokens (at most half the LM's context; generation stops at the context's end)."""
        model = self.model
        limit = generation.context_length(model)
        max_length = None if limit is None else limit - min(max_new_tokens, limit // 2)
        rows, pixels = [], []
        for i, (segments, images) in enumerate(examples):
            markers = sum(s.is_image for s in segments)
            if markers != len(images):
                raise ValueError(f"prompt {i} has {markers} {IMAGE_TOKEN} markers but {len(images)} images were given")
            encoded = prompts.encode(segments, model.tokenizer, max_length=max_length)
            kept = images[encoded.first_image :]  # left truncation may drop the first images with their text
            rows.append(encoded.input_ids)
            pixels.append([model.vision.preprocess(load_image(image)) for image in kept])
        input_ids, attention_mask = generation.left_pad(rows, pad_id=model.tokenizer.pad_token_id)
        most = max(len(p) for p in pixels)
        pixel_values = None
        if most:
            pixel_values = torch.zeros(len(rows), most, 3, *model.vision.image_size)  # (b, m, 3, h, w)
            for i, images in enumerate(pixels):
                if images:
                    pixel_values[i, : len(images)] = torch.stack(images)
        return Inputs(input_ids, attention_mask, pixel_values)

    def _complete(self, examples, options) -> list[str]:
        config = self.generation_config.replace(**options)
        inputs = self.prepare(examples, max_new_tokens=config.max_new_tokens)
        tokens = generation.generate(
            self.model, inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values, config=config
        )
        return [generation.decode_text(self.model.tokenizer, t, config.stop_strings) for t in tokens]

    def _stream(self, example, options) -> Iterator[str]:
        config = self.generation_config.replace(**options)
        inputs = self.prepare([example], max_new_tokens=config.max_new_tokens)  # bad input fails here, not at next()
        return generation.stream(self.model, inputs.input_ids, pixel_values=inputs.pixel_values, config=config)


def _as_batch(value) -> tuple[list, bool]:
    """A list or tuple is a batch; anything else (a path, bytes, an array, a PIL image) is one item."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list: nothing to run")
        return list(value), True
    return [value], False


_MARKERS = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(END_OF_CHUNK)})")


def interleaved_prompt(prompt: str) -> list[Segment]:
    """A raw prompt whose "<image>" and "<|endofchunk|>" are the special tokens -> segments."""
    segments = []
    for piece in _MARKERS.split(prompt):
        if piece == IMAGE_TOKEN:
            segments.append(Segment.image())
        elif piece == END_OF_CHUNK:
            segments.append(Segment.end_of_chunk(target=False))
        elif piece:
            segments.append(Segment(piece))
    return segments


def chat_messages(messages: Sequence[Mapping]) -> tuple[list[dict], list[ImageSource]]:
    """Messages with "images" or with content parts -> ({"role", "content"} with "<image>" markers, the images in order)."""
    if isinstance(messages, (str, Mapping)):
        raise ValueError("chat takes a list of messages like [{'role': 'user', 'content': '...'}]")
    plain, images = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {message!r:.80}")
        content, own = message.get("content"), list(message.get("images", ()))
        if isinstance(content, str):
            markers = content.count(IMAGE_TOKEN)
            if own and markers == 0:
                content = IMAGE_TOKEN * len(own) + content
            elif markers != len(own):
                raise ValueError(f"message {i} has {markers} {IMAGE_TOKEN} markers but {len(own)} images")
        elif isinstance(content, Sequence):
            if own:
                raise ValueError(f"message {i}: give images as content parts or as 'images', not both")
            content = "".join(_content_part(i, part, own) for part in content)
        else:
            raise ValueError(f"message {i}: content must be a string or a list of parts, got {type(content).__name__}")
        plain.append({"role": message.get("role"), "content": content})
        images += own
    return plain, images


def _content_part(i: int, part, images: list) -> str:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind == "image" and part.get("image") is not None:
        images.append(part["image"])
        return IMAGE_TOKEN
    raise ValueError(f"message {i}: a content part is {{'type': 'text', 'text': ...}} or {{'type': 'image', 'image': ...}}, got {part!r:.80}")


def end_of_turn(tokenizer) -> str | None:
    """The text a chat template writes after an assistant's answer ("<|im_end|>", "<|eot_id|>", ...); None without one."""
    if not getattr(tokenizer, "chat_template", None):
        return None  # the plain chat format closes answers with <|endofchunk|>, a stop token already
    mark = "\x00answer\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}], tokenize=False
        )
    except Exception:  # a template that rejects this conversation: rely on EOS alone
        return None
    if mark not in text:
        return None
    return text.rsplit(mark, 1)[1].strip() or None


def dsl_to_html(dsl: str) -> str:
    """The page DSL the model wrote -> HTML; text that is not valid DSL comes back in a minimal page, with a warning."""
    from vlm.sketch.dsl import parse_dsl  # lazy: the sketch tooling is only needed here
    from vlm.sketch.html import compile_html

    try:
        return compile_html(parse_dsl(dsl))
    except (ValueError, RecursionError) as error:
        warnings.warn(f"the model's page DSL does not parse ({str(error)[:200]}); returning its text in a plain page")
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Page</title>\n</head>\n'
            f"<body>\n<pre>{escape(dsl)}</pre>\n</body>\n</html>\n"
        )
