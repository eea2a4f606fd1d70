import os

# Tests never reach a model hub: a hub lookup fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# One thread: the tiny models are dominated by per-op overhead, which a second thread only adds to.
torch.set_num_threads(1)

import pytest  # noqa: E402

from tiny_backbones import save_tiny_lm  # noqa: E402


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_lm_dir(request, tmp_path_factory):
    """A Hugging Face folder holding a tiny random LM, once per family."""
    return save_tiny_lm(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))
