"""Few-shot prompting the way OpenFlamingo evaluates: demo selection, prompt formats, answer clean-up.

Demos come from a support set, either at random (seeded) or by RICES (the support images most
similar to the query image). They are written before the query in OpenFlamingo's formats:

    captioning  <image>Output:{caption}<|endofchunk|>  ...  <image>Output:
    VQA         <image>Question:{question} Short answer:{answer}<|endofchunk|>  ...
                <image>Question:{question} Short answer:

Each <image> stands for the next image of the sample's image list: demos' images first, the
query's last. A demo never shows the query's own image.
"""

import random
import re
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vlm.prompts import CAPTION_PROMPT, END_OF_CHUNK, IMAGE_TOKEN, VQA_PROMPT

EmbedFn = Callable[[list[Image.Image]], torch.Tensor]  # images -> features [len(images), dim]


def caption_prompt(caption: str | None = None) -> str:
    """A captioning demo, or the query when no caption is given."""
    return f"{IMAGE_TOKEN}{CAPTION_PROMPT}" + ("" if caption is None else f" {caption.strip()}{END_OF_CHUNK}")


def vqa_prompt(question: str, answer: str | None = None) -> str:
    """A VQA demo, or the query when no answer is given."""
    query = VQA_PROMPT.format(question=question.strip())
    return f"{IMAGE_TOKEN}{query}" + ("" if answer is None else f" {answer.strip()}{END_OF_CHUNK}")


# A model that keeps going writes the next demo's opening; its output ends where that starts.
_CAPTION_END = re.compile("Output|Question|\n|" + re.escape(END_OF_CHUNK))
_ANSWER_END = re.compile("Question|Answer|Short|Output|\n|" + re.escape(END_OF_CHUNK))


def postprocess_caption(text: str) -> str:
    """The caption a model generated after "Output:", without quotes (as OpenFlamingo)."""
    return _CAPTION_END.split(text, maxsplit=1)[0].replace('"', "").strip()


def postprocess_answer(text: str) -> str:
    """The answer a model generated after "Short answer:"; like OpenFlamingo, only up to the first ", "."""
    return _ANSWER_END.split(text, maxsplit=1)[0].split(", ", 1)[0].strip()


def load_image(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _index_by_image(image_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    index: dict[Hashable, list[int]] = {}
    for i, image_id in enumerate(image_ids):
        index.setdefault(image_id, []).append(i)
    return index


def _check_enough(num_support: int, num_excluded: int, shots: int, image_id: Hashable) -> None:
    if shots > num_support - num_excluded:
        raise ValueError(f"cannot pick {shots} demos for image {image_id!r}: the support set has only "
                         f"{num_support - num_excluded} items showing other images")


class RandomDemos:
    """Demos drawn uniformly from the support set.

    The generator is seeded by (seed, query image id), so a query gets the same demos
    whatever the batch size or the order of the queries.
    """

    def __init__(self, image_ids: Sequence[Hashable], *, seed: int = 0):
        self.num_support, self.seed = len(image_ids), seed
        self._by_image = _index_by_image(image_ids)

    def select(self, query_image_ids: Sequence[Hashable], query_images: Sequence[Image.Image],
               shots: int) -> list[list[int]]:
        """Support indices of `shots` demos for each query (the images are not needed here)."""
        chosen = []
        for image_id in query_image_ids:
            excluded = set(self._by_image.get(image_id, ()))
            _check_enough(self.num_support, len(excluded), shots, image_id)
            rng = random.Random(f"{self.seed}:{image_id}")
            drawn = rng.sample(range(self.num_support), shots + len(excluded))
            chosen.append([i for i in drawn if i not in excluded][:shots])
        return chosen


class RICES:
    """Retrieval-based in-context example selection (Yang et al. 2022; OpenFlamingo's "rices").

    Demos are the support items whose image features are most cosine-similar to the query
    image's, ordered so that the most similar sits last, next to the query.
    """

    def __init__(self, features: torch.Tensor, image_ids: Sequence[Hashable], *, embed: EmbedFn):
        if features.ndim != 2 or len(features) != len(image_ids):
            raise ValueError(f"features must be [num_support={len(image_ids)}, dim], got {tuple(features.shape)}")
        self.features = F.normalize(features.float(), dim=-1)
        self.embed = embed
        self._by_image = _index_by_image(image_ids)

    @classmethod
    def build(cls, image_paths: Sequence[Path], image_ids: Sequence[Hashable], *, embed: EmbedFn,
              batch_size: int = 64, cache: str | Path | None = None, progress: bool = True) -> "RICES":
        """Embed the support images once (each distinct file once), or load them from `cache`."""
        if cache is not None and Path(cache).exists():
            return cls(torch.load(cache), image_ids, embed=embed)
        unique = list(dict.fromkeys(image_paths))
        chunks = []
        for start in tqdm(range(0, len(unique), batch_size), desc="RICES support features", disable=not progress):
            with torch.no_grad():
                chunks.append(embed([load_image(p) for p in unique[start:start + batch_size]]).float().cpu())
        row = {path: i for i, path in enumerate(unique)}
        features = torch.cat(chunks)[[row[path] for path in image_paths]]
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            torch.save(features, cache)
        return cls(features, image_ids, embed=embed)

    def select(self, query_image_ids: Sequence[Hashable], query_images: Sequence[Image.Image],
               shots: int) -> list[list[int]]:
        """Support indices of the `shots` most similar demos for each query, most similar last."""
        with torch.no_grad():
            queries = F.normalize(self.embed(list(query_images)).float().cpu(), dim=-1)
        similarity = queries @ self.features.T
        for row, image_id in enumerate(query_image_ids):
            excluded = self._by_image.get(image_id, [])
            _check_enough(len(self.features), len(excluded), shots, image_id)
            similarity[row, excluded] = -torch.inf
        nearest_first = similarity.topk(shots, dim=-1).indices
        return [row.flip(0).tolist() for row in nearest_first]
