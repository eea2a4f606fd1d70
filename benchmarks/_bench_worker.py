"""One side of bench_vs_openflamingo.py: one implementation, one figure, in a process of its own.

    python benchmarks/_bench_worker.py --impl ours|openflamingo --figure train_fp32 --lm-folder DIR

The driver talks to it over stdin/stdout, one JSON object a line. Once the model is built and warmed
up, the worker prints what the warm-up found (the matmul FLOPs of a training step, counted by
torch.utils.flop_counter, or the tokens generated); then it answers each "run" with the wall-clock and
CPU time of one training step or generate call, and "quit" with the process's peak memory. Between
requests it sits idle, so the driver can interleave two workers' runs while each keeps its own ru_maxrss.

Both sides get the same backbones and shapes: open_clip ViT-B-32 (random init, same seed), the
SmolLM2-135M-Instruct folder given by --lm-folder, a Perceiver Resampler of depth 6 with 64 latents at
the vision width (768), gated cross-attention before every 3rd decoder layer, one 224x224 image a sample.
Under bf16 autocast, ours holds its frozen LM in bf16 (ModelConfig.lm_dtype, as configs/gpu-*.yaml do);
OpenFlamingo keeps float32 weights, as its --precision amp_bf16 does: its embedding matrix is trained.
"""

import argparse
import json
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's vlm, also from the OpenFlamingo venv

BATCH = 8
TRAIN_TOKENS = 128
NEW_TOKENS = 32
PROMPT = "Describe this image in detail. The image shows"
FIGURES = ("train_fp32", "train_bf16", "generate_b1", "generate_b8")
LEARNING_RATE = 1e-4


# --- the two implementations --------------------------------------------------------------------
class Ours:
    def __init__(self, lm_folder: str, device: torch.device, bf16: bool):
        from vlm.config import ModelConfig
        from vlm.model import build_model

        torch.manual_seed(0)
        config = ModelConfig(
            vision="open_clip:ViT-B-32",
            vision_weights=None,
            lm=lm_folder,
            lm_dtype="bfloat16" if bf16 else "float32",  # frozen, so no float32 master copy is needed
            resampler_depth=6,
            num_latents=64,
            resampler_dim=768,  # OpenFlamingo's perceiver runs at the vision width
            cross_attn_every_n_layers=3,
            train_special_token_embeddings=True,  # what OpenFlamingo's gradient mask leaves trained
        )
        self.model = build_model(config).to(device)
        with torch.no_grad():
            self.model.special_embeddings[:] = neutral_embedding(self.model.lm.get_input_embeddings().weight)
        self.image_token_id = self.model.image_token_id
        self.tokenizer = self.model.tokenizer

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.model.trainable_parameters().values())

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trainable(), lr=LEARNING_RATE, weight_decay=0.1)

    def loss(self, input_ids, pixels):
        return self.model(input_ids, pixel_values=pixels[:, :, 0], labels=input_ids)["loss"]

    def after_backward(self):
        pass

    def decoding_modules(self) -> list[torch.nn.Module]:
        return [self.model.lm, self.model.cross_attn]

    def generate(self, input_ids, pixels) -> list[list[int]]:
        from vlm.generation import GenerationConfig, generate

        return generate(self.model, input_ids, pixel_values=pixels[:, :, 0], config=GenerationConfig(max_new_tokens=NEW_TOKENS))


class OpenFlamingo:
    """OpenFlamingo 2.0.1 as its own training loop (train_utils.train_one_epoch) and generate() use it."""

    def __init__(self, lm_folder: str, device: torch.device, bf16: bool):
        # bf16 changes nothing here: float32 weights under autocast, as its --precision amp_bf16
        patch_openflamingo_for_transformers_5()
        from open_flamingo import create_model_and_transforms

        torch.manual_seed(0)
        model, _, tokenizer = create_model_and_transforms(
            clip_vision_encoder_path="ViT-B-32",
            clip_vision_encoder_pretrained=None,
            lang_encoder_path=lm_folder,
            tokenizer_path=lm_folder,
            cross_attn_every_n_layers=3,
            decoder_layers_attr_name="model.layers",
        )
        self.model = model.float().to(device)  # transformers 5 would otherwise mix bf16 into the LM
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        self.end_of_chunk_id = tokenizer.convert_tokens_to_ids("<|endofchunk|>")
        new_rows = [self.image_token_id, self.end_of_chunk_id]  # appended after the LM's own rows
        embeddings = self.model.lang_encoder.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[new_rows] = neutral_embedding(embeddings[: min(new_rows)])

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def optimizer(self) -> torch.optim.Optimizer:
        # open_flamingo/train/train.py: weight decay on the cross-attention layers only
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if "gated_cross_attn" in n], "weight_decay": 0.1},
            {"params": [p for n, p in named if "gated_cross_attn" not in n], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=LEARNING_RATE)

    def loss(self, input_ids, pixels):
        labels = input_ids.masked_fill(input_ids == self.image_token_id, -100)
        return self.model(vision_x=pixels, lang_x=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)[0]

    def after_backward(self):
        # train_utils.train_one_epoch: only the rows of <image> and <|endofchunk|> of the embedding matrix learn
        embeddings = self.model.lang_encoder.get_input_embeddings().weight
        mask = torch.zeros_like(embeddings.grad)
        mask[[self.image_token_id, self.end_of_chunk_id]] = 1
        embeddings.grad = embeddings.grad * mask

    def decoding_modules(self) -> list[torch.nn.Module]:
        return [self.model.lang_encoder]  # the LM with its gated cross-attention layers inside

    def generate(self, input_ids, pixels) -> list[list[int]]:
        out = self.model.generate(
            vision_x=pixels,
            lang_x=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=NEW_TOKENS,
            num_beams=1,
            do_sample=False,
        )
        return out[:, input_ids.shape[1] :].tolist()


def patch_openflamingo_for_transformers_5():
    """The two fixes OpenFlamingo 2.0.1 needs on transformers 5 (shared/notes/openflamingo.md), at run time."""
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin

    forward = FlamingoLMMixin.forward

    def forward_with_default_mask(self, input_ids, attention_mask=None, **kwargs):
        # transformers >= 5.18's generate() drops an all-ones attention mask
        return forward(self, input_ids, attention_mask, **kwargs)

    FlamingoLMMixin.forward = forward_with_default_mask


def neutral_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """Where both sides start the rows of <image> and <|endofchunk|>: the mean of the LM's own rows.

    The same start on both sides makes greedy decoding give the same tokens, a check that both compute
    the same function (with gates at 0 the image does not change the text yet).
    """
    return embeddings.mean(0)


IMPLEMENTATIONS = {"ours": Ours, "openflamingo": OpenFlamingo}


# --- the figures -------------------------------------------------------------------------------
def inputs(impl, batch: int, tokens: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (b, t) starting with <image>, and pixels (b, 1, 1, 3, 224, 224); the same values on both sides."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 1, 1, 3, 224, 224, generator=generator)
    if tokens is None:  # a real prompt, for generation
        text = impl.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        text = torch.tensor(text).expand(batch, -1)
    else:  # random ordinary tokens, for training
        text = torch.randint(100, 49000, (batch, tokens - 1), generator=generator)
    input_ids = torch.cat([torch.full((batch, 1), impl.image_token_id), text], dim=1)
    return input_ids.to(device), pixels.to(device)


class Figure:
    def __init__(self, impl, figure: str, device: torch.device):
        self.impl, self.device = impl, device
        self.training = figure.startswith("train")
        if self.training:
            self.input_ids, self.pixels = inputs(impl, BATCH, TRAIN_TOKENS, device)
            self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if figure == "train_bf16" else nullcontext()
            self.parameters = impl.trainable()
            self.optimizer = impl.optimizer()
            impl.model.train()
        else:
            batch = 1 if figure == "generate_b1" else BATCH
            self.input_ids, self.pixels = inputs(impl, batch, None, device)
            impl.model.eval()

    def run(self):
        if not self.training:
            return self.impl.generate(self.input_ids, self.pixels)
        with self.autocast:
            loss = self.impl.loss(self.input_ids, self.pixels)
        loss.backward()
        self.impl.after_backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def timed(self) -> dict:
        """One run: its wall-clock time, and this process's CPU time (steadier while others load the machine)."""
        synchronize(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        self.run()
        synchronize(self.device)
        return {"ms": (time.perf_counter() - wall) * 1000, "cpu_ms": (time.process_time() - cpu) * 1000}

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.run()
        return counter.get_total_flops()


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct weights of `modules`: what one decoding step reads at least once (a tied
    embedding and LM head count once)."""
    tensors = {p.data_ptr(): p for module in modules for p in module.parameters()}
    return sum(p.numel() * p.element_size() for p in tensors.values())


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--figure", choices=FIGURES, required=True)
    parser.add_argument("--lm-folder", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reply = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not garble the protocol

    impl = IMPLEMENTATIONS[args.impl](args.lm_folder, device, bf16=args.figure == "train_bf16")
    figure = Figure(impl, args.figure, device)
    ready = {"loaded_rss_mib": peak_memory(device)["peak_rss_mib"], "trainable": sum(p.numel() for p in impl.trainable())}
    if figure.training:  # the warm-up step, its FLOPs counted
        try:
            ready["flops"] = figure.flops()
        except AssertionError:  # torch 2.11's counter rejects grouped-query SDPA shapes (seen with CUDA bf16)
            figure.run()
    else:
        ready["tokens"] = figure.run()
        ready["decoding_bytes"] = weight_bytes(impl.decoding_modules())
    print(json.dumps(ready), file=reply, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            print(json.dumps(figure.timed()), file=reply, flush=True)
        elif command == "quit":
            print(json.dumps(peak_memory(device)), file=reply, flush=True)
            return
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
