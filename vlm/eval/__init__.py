"""Evaluation: COCO captioning (CIDEr-D, BLEU, ROUGE-L) and VQAv2 accuracy, zero- and few-shot."""

from vlm.eval.caption_metrics import CaptionScores, bleu, cider_d, ptb_tokenize, rouge_l, score_captions
from vlm.eval.datasets import (CaptionExample, VQAExample, load_captions, load_coco_captions,
                               load_karpathy_captions, load_vqa)
from vlm.eval.fewshot import (RICES, RandomDemos, caption_prompt, postprocess_answer, postprocess_caption,
                              vqa_prompt)
from vlm.eval.runner import EvalReport, ShotsResult, evaluate_captioning, evaluate_vqa
from vlm.eval.vqa_metrics import normalize_answer, vqa_accuracy

__all__ = [
    "CaptionScores", "bleu", "cider_d", "ptb_tokenize", "rouge_l", "score_captions",
    "CaptionExample", "VQAExample", "load_captions", "load_coco_captions", "load_karpathy_captions", "load_vqa",
    "RICES", "RandomDemos", "caption_prompt", "postprocess_answer", "postprocess_caption", "vqa_prompt",
    "EvalReport", "ShotsResult", "evaluate_captioning", "evaluate_vqa",
    "normalize_answer", "vqa_accuracy",
]
