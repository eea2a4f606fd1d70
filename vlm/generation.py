"""Decoding: greedy, sampling, beam search and streaming over a VisionLanguageModel.

One call encodes its images once: the resampler runs at the start and each cross-attention block's
keys/values of the latents are computed on first use and kept in one MediaState for every later step.
The LM's self-attention runs with its key/value cache, so each step feeds one new token per row.
Batches are left-padded (`left_pad`), with positions counted from each row's first real token, so a
row decodes to the same tokens in a batch as alone.

With `allowed_words` (a page DSL's words, say) the output is those words, each after a space: each step
picks among the tokens that continue a word or start the next one. A token that is the only way on (the
"tn" and "-" of " btn-red" once " b" is written) needs no choice, so a single prompt feeds it in the same forward
pass as the token before it ("jump-forward" decoding); a batch picks it like any other, to the same text.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

from vlm.model import MediaState, VisionLanguageModel


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # stop tokens are banned before this many new tokens (benchmarks, long outputs)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # sample from the k most likely tokens; 0: all
    top_p: float = 1.0  # sample from the smallest set of tokens holding this much probability
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / length ** length_penalty
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the prompt or output less likely (CTRL)
    stop_strings: tuple[str, ...] = ()  # generation ends once the text holds one; it is cut from the text
    seed: int | None = None  # sampling seed; None: torch's global generator
    allowed_words: tuple[str, ...] = ()  # the output is these words, each after a space; (): any text

    def __post_init__(self):
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if isinstance(self.allowed_words, str):
            raise ValueError("generation option allowed_words must be a list of words, not one string")
        self.allowed_words = tuple(self.allowed_words)
        rules = {
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "min_new_tokens": (0 <= self.min_new_tokens <= self.max_new_tokens, "in [0, max_new_tokens]"),
            "temperature": (self.temperature > 0, "> 0"),
            "top_k": (self.top_k >= 0, ">= 0"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "num_beams": (self.num_beams >= 1, ">= 1"),
            "repetition_penalty": (self.repetition_penalty > 0, "> 0"),
            "stop_strings": (all(isinstance(s, str) and s for s in self.stop_strings), "non-empty strings"),
            "allowed_words": (all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in self.allowed_words),
                              "words: non-empty strings without spaces"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"generation option {name} must be {rule}, got {getattr(self, name)!r}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("beam search does not sample: set do_sample=False or num_beams=1")

    def replace(self, **options) -> "GenerationConfig":
        """A copy with `options` changed; an unknown option is an error that lists the valid ones."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; valid: {', '.join(sorted(names))}")
        return GenerationConfig(**{**{n: getattr(self, n) for n in names}, **options})


def left_pad(sequences: Sequence[Sequence[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> input_ids (b, t) padded on the left, attention_mask (b, t) with 1 on real tokens."""
    if not sequences or not all(sequences):
        raise ValueError("every prompt needs at least one token")
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        input_ids[i, length - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, length - len(sequence) :] = 1
    return input_ids, attention_mask


def context_length(model: VisionLanguageModel) -> int | None:
    """The most positions the LM takes, or None when its config does not say."""
    config = model.lm.config.get_text_config() if hasattr(model.lm.config, "get_text_config") else model.lm.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def stop_token_ids(model: VisionLanguageModel) -> set[int]:
    """Tokens that end a row: the tokenizer's and the LM's end-of-sequence, and <|endofchunk|>."""
    ids = {model.end_of_chunk_id}
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    eos = getattr(getattr(model.lm, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    return ids


def decode_text(tokenizer, tokens: Sequence[int], stop_strings: Sequence[str] = ()) -> str:
    """Generated tokens -> the text handed to the user: cut before the first stop string, stripped."""
    return _cut_at_stop(_decode(tokenizer, tokens), stop_strings)[0].strip()


def generate(
    model: VisionLanguageModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
) -> list[list[int]]:
    """Left-padded prompts (b, t) with their images (b, m, 3, h, w) -> each row's new tokens.

    A row ends at a stop token (not returned), at a stop string (the tokens that complete it are kept:
    `decode_text` cuts it), or after max_new_tokens.
    """
    config = config or GenerationConfig()
    if config.num_beams > 1:
        return _beam_search(model, input_ids, attention_mask, pixel_values, config)
    for tokens in _sample(model, input_ids, attention_mask, pixel_values, config):
        pass
    return tokens


def stream(
    model: VisionLanguageModel,
    input_ids: torch.Tensor,
    *,
    pixel_values: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[str]:
    """One prompt (1, t) -> its text in pieces as they are decoded; joined, they are `decode_text`'s text.

    A piece is given out only once no later token can change it: an incomplete UTF-8 character, trailing
    whitespace and a tail that may begin a stop string wait for the next token.
    """
    config = config or GenerationConfig()
    if input_ids.shape[0] != 1:
        raise ValueError(f"stream takes one prompt, got a batch of {input_ids.shape[0]}")
    if config.num_beams > 1:
        raise ValueError("beam search cannot stream: its best text is known only at the end")
    tokenizer, sent = model.tokenizer, ""
    for (tokens,) in _sample(model, input_ids, None, pixel_values, config):
        text, stopped = _cut_at_stop(_decode(tokenizer, tokens), config.stop_strings)
        if not stopped:
            text = _hold_back(text, config.stop_strings)
        text = text.strip()
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent) :]
            sent = text
    rest = decode_text(tokenizer, tokens, config.stop_strings)[len(sent) :]
    if rest:
        yield rest


# --- internals ------------------------------------------------------------------------------


class _Session:
    """The model state of one generate call: the LM cache, the media encoded once, where each row stands."""

    def __init__(self, model: VisionLanguageModel, input_ids, attention_mask, pixel_values):
        self.model = model
        device = model.special_embeddings.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.attention_mask = attention_mask.to(device)
        self.images_before = (input_ids == model.image_token_id).sum(1)  # (b,): images for all later steps
        latents = None
        if self.images_before.any():
            given = 0 if pixel_values is None else pixel_values.shape[1]
            if given < self.images_before.max():
                raise ValueError(f"a prompt has {int(self.images_before.max())} <image> markers but pixel_values hold {given} images")
            vision_dtype = next(model.vision.parameters()).dtype
            latents = model.encode_images(pixel_values.to(device, vision_dtype), self.images_before)
        self.media = MediaState(latents=latents)  # reused by every step: keys/values are computed once
        position_ids = (self.attention_mask.cumsum(1) - 1).clamp_min(0)  # (b, t): 0 at each row's first token
        self.next_position = position_ids[:, -1:] + 1  # (b, 1)
        out = model(input_ids, media=self.media, attention_mask=self.attention_mask, position_ids=position_ids, use_cache=True)
        self.cache = out["cache"]
        self.logits = model.logits(out["hidden"][:, -1]).float()  # (b, vocab)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (n,), or k per row (n, k) -> next-token logits after the last (n, vocab)."""
        tokens = tokens[:, None] if tokens.dim() == 1 else tokens  # (n, k)
        k = tokens.shape[1]
        self.attention_mask = F.pad(self.attention_mask, (0, k), value=1)
        out = self.model(
            tokens,
            media=self.media,
            attention_mask=self.attention_mask,
            position_ids=self.next_position + torch.arange(k, device=tokens.device),  # (n, k)
            images_before=self.images_before,
            cache=self.cache,
            use_cache=True,
        )
        self.cache, self.next_position = out["cache"], self.next_position + k
        self.logits = self.model.logits(out["hidden"][:, -1]).float()
        return self.logits

    def repeat(self, k: int):
        """Each row becomes k consecutive rows (beams), the media and the cache with it."""
        self.cache.batch_repeat_interleave(k)
        media = self.media
        if media.latents is not None:
            media.latents = media.latents.repeat_interleave(k, 0)
            media.keys_values = {key: tuple(t.repeat_interleave(k, 0) for t in kv) for key, kv in media.keys_values.items()}
        self.attention_mask = self.attention_mask.repeat_interleave(k, 0)
        self.images_before = self.images_before.repeat_interleave(k, 0)
        self.next_position = self.next_position.repeat_interleave(k, 0)
        self.logits = self.logits.repeat_interleave(k, 0)

    def reorder(self, source: torch.Tensor):
        # Beams only move within their own row, whose media, mask and positions they all share.
        self.cache.reorder_cache(source.to(self.attention_mask.device))


def tokenizes_word_by_word(tokenizer, words: Sequence[str]) -> bool:
    """Whether the words, each after a space, tokenize in a run as each does alone: allowed_words needs it.

    True of byte-level BPE (GPT-2's, SmolLM2's); not of a tokenizer that starts every text with a marker of
    its own (SentencePiece's lone "▁"), whose words alone would steer it to tokens it never writes in a run.
    """
    alone = [token for word in words for token in tokenizer.encode(" " + word, add_special_tokens=False)]
    return tokenizer.encode("".join(" " + word for word in words), add_special_tokens=False) == alone


class _WordTrie:
    """The tokens of " word" for each allowed word, as a trie whose root is the space between two words.

    A state is a node: where the text stands inside a word (0: between words). A node that ends a word and
    also begins a longer one (" text" of " textarea") allows both ways on.
    """

    def __init__(self, tokenizer, words: Sequence[str], stops: set[int]):
        if not tokenizes_word_by_word(tokenizer, words):
            raise ValueError("allowed_words: this tokenizer writes a run of these words in other tokens than each "
                             "word alone, so the list cannot steer decoding; decode with allowed_words=()")
        self.children: list[dict[int, int]] = [{}]  # node -> {token: next node}
        self.ends = [False]
        for word in words:
            node = 0
            for token in tokenizer.encode(" " + word, add_special_tokens=False):
                if token not in self.children[node]:
                    self.children[node][token] = len(self.children)
                    self.children.append({})
                    self.ends.append(False)
                node = self.children[node][token]
            self.ends[node] = True
        self.stops = sorted(stops)

    def allowed(self, node: int) -> list[int]:
        """The tokens that may follow: the word's next tokens, and after a whole word the next word or a stop."""
        inside = list(self.children[node]) if node else []
        if node and not self.ends[node]:
            return inside
        return inside + list(self.children[0]) + self.stops

    def advance(self, node: int, token: int) -> int:
        if token in self.children[node]:
            return self.children[node][token]
        return self.children[0].get(token, 0)  # the next word, or a stop

    def forced(self, node: int) -> list[int]:
        """The tokens that must follow `node`, up to the next choice: the rest of a word its start decides."""
        tokens = []
        while node and not self.ends[node] and len(self.children[node]) == 1:
            (token, node), = self.children[node].items()
            tokens.append(token)
        return tokens


def _only_allowed(scores: torch.Tensor, trie: _WordTrie, nodes: list[int]) -> torch.Tensor:
    """(n, vocab) scores -> -inf on every token that does not go on from row i's node."""
    allowed = torch.full_like(scores, float("-inf"))
    for i, node in enumerate(nodes):
        index = torch.tensor(trie.allowed(node), device=scores.device)
        allowed[i, index] = scores[i, index]
    return allowed


def _word_trie(model, config: GenerationConfig) -> _WordTrie | None:
    return _WordTrie(model.tokenizer, config.allowed_words, stop_token_ids(model)) if config.allowed_words else None


def _seen_tokens(input_ids, attention_mask, vocab_size: int) -> torch.Tensor:
    """(b, vocab) True where a real (non-padding) prompt token has that id: for the repetition penalty."""
    real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, real) > 0


def _scores(model, logits: torch.Tensor, seen: torch.Tensor, step: int, stops: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Raw logits (n, vocab) at `step` -> the logits decoding picks from: repetition penalty, banned tokens."""
    if config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen.to(logits.device), penalised, logits)
    if step < config.min_new_tokens:
        logits = logits.index_fill(-1, stops, float("-inf"))
    # a generated <image> would need an image nobody gave: never pick one
    return logits.index_fill(-1, torch.tensor([model.image_token_id], device=logits.device), float("-inf"))


def _pick(scores: torch.Tensor, config: GenerationConfig, generator) -> torch.Tensor:
    """(n, vocab) -> (n,) next tokens: argmax, or a sample after temperature, top-k and top-p."""
    if not config.do_sample:
        return scores.argmax(-1)
    scores = scores / config.temperature
    if config.top_k:
        kth = scores.topk(min(config.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        # drop a token once the more likely ones before it already hold top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= config.top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


def _generator(config: GenerationConfig, device) -> torch.Generator | None:
    return None if config.seed is None else torch.Generator(device).manual_seed(config.seed)


def _max_new_tokens(model, input_ids, config: GenerationConfig) -> int:
    limit = context_length(model)
    if limit is None:
        return config.max_new_tokens
    if input_ids.shape[1] >= limit:
        raise ValueError(f"the prompt has {input_ids.shape[1]} tokens; the LM takes at most {limit}: shorten it")
    return min(config.max_new_tokens, limit - input_ids.shape[1])


def _hits_stop_string(tokenizer, tokens, stop_strings) -> bool:
    return bool(stop_strings) and _cut_at_stop(_decode(tokenizer, tokens), stop_strings)[1]


@torch.inference_mode()
def _sample(model, input_ids, attention_mask, pixel_values, config) -> Iterator[list[list[int]]]:
    """Greedy or sampled decoding; yields every row's tokens so far after each step."""
    max_new = _max_new_tokens(model, input_ids, config)
    session = _Session(model, input_ids, attention_mask, pixel_values)
    device = session.attention_mask.device
    stops = torch.tensor(sorted(stop_token_ids(model)), device=device)
    seen = _seen_tokens(input_ids.to(device), session.attention_mask, session.logits.shape[-1])
    generator = _generator(config, device)
    b = input_ids.shape[0]
    tokens = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    trie, nodes = _word_trie(model, config), [0] * b
    logits = session.logits
    while True:
        step = len(max(tokens, key=len))
        scores = _scores(model, logits, seen, step, stops, config)
        if trie:
            scores = _only_allowed(scores, trie, nodes)
        next_tokens = _pick(scores, config, generator)  # (b,)
        next_tokens = next_tokens.masked_fill(done, model.tokenizer.pad_token_id)  # finished rows idle on padding
        done |= torch.isin(next_tokens, stops)
        fed = next_tokens[:, None]  # (b, k): what the next forward pass reads
        for i in (~done).nonzero()[:, 0].tolist():
            tokens[i].append(int(next_tokens[i]))
            if trie:
                nodes[i] = trie.advance(nodes[i], tokens[i][-1])
                if b == 1:  # jump forward over what the word's start decided, as far as max_new_tokens allows
                    forced = trie.forced(nodes[i])[: max_new - len(tokens[i])]
                    for token in forced:
                        nodes[i] = trie.advance(nodes[i], token)
                    tokens[i] += forced
                    fed = torch.tensor([[tokens[i][-1 - len(forced)], *forced]], device=device)
            if _hits_stop_string(model.tokenizer, tokens[i], config.stop_strings):
                done[i] = True
        yield tokens
        if done.all() or len(max(tokens, key=len)) >= max_new:
            return
        seen[torch.arange(b, device=device)[:, None], fed] = True
        logits = session.step(fed)


@torch.inference_mode()
def _beam_search(model, input_ids, attention_mask, pixel_values, config) -> list[list[int]]:
    """Keep the `num_beams` best partial outputs per row; return the best finished one by length-normalised score."""
    k, b = config.num_beams, input_ids.shape[0]
    max_new = _max_new_tokens(model, input_ids, config)
    session = _Session(model, input_ids, attention_mask, pixel_values)  # the prompt runs once per row, not per beam
    device = session.attention_mask.device
    seen = _seen_tokens(input_ids.to(device), session.attention_mask, session.logits.shape[-1])
    session.repeat(k)
    seen = seen.repeat_interleave(k, 0)  # (b*k, vocab)
    stops = stop_token_ids(model)
    stop_ids = torch.tensor(sorted(stops), device=device)
    beam_scores = torch.zeros(b, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start equal: let only the first one expand at step 0
    beam_scores = beam_scores.view(-1)
    beams = [[] for _ in range(b * k)]
    finished = [[] for _ in range(b)]  # per row: (score, tokens), the k best
    done = [False] * b
    trie, nodes = _word_trie(model, config), [0] * (b * k)

    def finish(row, score, tokens, length):
        finished[row].append((score / length**config.length_penalty, tokens))
        finished[row].sort(key=lambda item: -item[0])
        del finished[row][k:]

    logits = session.logits
    for step in range(max_new):
        logprobs = F.log_softmax(_scores(model, logits, seen, step, stop_ids, config), dim=-1)  # (b*k, vocab)
        if trie:
            logprobs = _only_allowed(logprobs, trie, nodes)
        vocab = logprobs.shape[-1]
        candidates = (beam_scores[:, None] + logprobs).view(b, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (b, 2k): enough to keep k going past stops
        source, chosen, scores, next_nodes = [], [], [], []
        for row in range(b):
            picked = 0
            ranked = zip(top_scores[row].tolist(), top_index[row].tolist())
            for rank, (score, index) in enumerate([] if done[row] else ranked):
                if picked == k or score == float("-inf"):
                    break
                beam, token = row * k + index // vocab, index % vocab
                tokens = beams[beam] + [token]
                if token in stops or _hits_stop_string(model.tokenizer, tokens, config.stop_strings):
                    if rank < k:  # a stop below the top k would not have survived as a beam either
                        finish(row, score, tokens if token not in stops else beams[beam], step + 1)
                    continue
                source.append(beam), chosen.append(token), scores.append(score)
                picked += 1
                if trie:
                    next_nodes.append(trie.advance(nodes[beam], token))
            if picked:
                # done once k answers are finished and no running beam can beat them (Hugging Face's rule)
                best_running = max(scores[-picked:]) / (step + 1) ** config.length_penalty
                done[row] = len(finished[row]) == k and finished[row][0][0] >= best_running
            else:
                done[row] = True
            # a finished row, or one with fewer than k beams left, fills its places with idle beams
            source += [row * k] * (k - picked)
            chosen += [model.tokenizer.pad_token_id] * (k - picked)
            scores += [float("-inf")] * (k - picked)
            next_nodes += [0] * (k - picked) if trie else []
        source_t = torch.tensor(source, device=device)
        chosen_t = torch.tensor(chosen, device=device)
        beams = [beams[s] + [t] for s, t in zip(source, chosen)]
        nodes = next_nodes
        beam_scores = torch.tensor(scores, device=device)
        if all(done) or step == max_new - 1:
            break
        seen = seen[source_t]
        seen[torch.arange(b * k, device=device), chosen_t] = True
        session.reorder(source_t)
        logits = session.step(chosen_t)
    for row in range(b):
        for j in range(row * k, row * k + k):
            if beam_scores[j] > float("-inf") and not done[row]:
                finish(row, float(beam_scores[j]), beams[j], len(beams[j]))
    return [finished[row][0][1] if finished[row] else [] for row in range(b)]


def _decode(tokenizer, tokens: Sequence[int]) -> str:
    return tokenizer.decode(list(tokens), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether there was one)."""
    ends = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def _hold_back(text: str, stop_strings: Sequence[str]) -> str:
    """`text` less a tail that the next token may still change: an incomplete character, a stop string's start."""
    text = text.rstrip("\ufffd")
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                text = text[:-n]
                break
    return text
