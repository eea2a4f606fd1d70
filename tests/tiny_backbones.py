"""Tiny random backbones built locally, so tests need no hub and run in seconds."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "a photo of a cat sitting on a mat",
    "a red button and a green button on a web page",
    "Question: how many buttons are there? Short answer: three",
    "Output: a dog running in the park",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "<html><body><div class=\"row\"><p>text</p></div></body></html>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_lm(family: str, directory: Path) -> Path:
    """Write a tiny random causal LM of `family` ("gpt2" or "llama") as a Hugging Face folder."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    vocab = len(tokenizer)
    special = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=4, n_head=4, **special)
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **special,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown tiny LM family {family!r}")
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
