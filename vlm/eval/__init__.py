"""Evaluation: COCO captioning (CIDEr-D, BLEU, ROUGE-L) and VQAv2 accuracy, zero- and few-shot, and
held-out sets to run them on, written from the data engine and easy-VQA."""

import importlib

_EXPORTS = {
    "caption_metrics": ["CaptionScores", "bleu", "cider_d", "ptb_tokenize", "rouge_l", "score_captions"],
    "datasets": ["CaptionExample", "VQAExample", "load_captions", "load_coco_captions", "load_karpathy_captions",
                 "load_vqa"],
    "fewshot": ["RICES", "RandomDemos", "caption_prompt", "postprocess_answer", "postprocess_caption", "vqa_prompt"],
    "generated": ["HELD_OUT_SEED", "write_easy_vqa", "write_page_sets"],
    "runner": ["EvalReport", "ShotsResult", "evaluate_captioning", "evaluate_vqa"],
    "vqa_metrics": ["normalize_answer", "vqa_accuracy"],
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE)


def __getattr__(name: str):
    # Imported on first use, so writing the sets (`vlm eval write-sets`) does not load torch, which RICES needs.
    if name in _MODULE:
        return getattr(importlib.import_module(f"vlm.eval.{_MODULE[name]}"), name)
    raise AttributeError(f"module 'vlm.eval' has no attribute {name!r}")
