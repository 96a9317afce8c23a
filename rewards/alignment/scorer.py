"""The local prompt-alignment scorer: a captioning VLM and BERTScore recall (see :mod:`rewards.alignment`)."""

from __future__ import annotations

import numpy as np

from rewards.alignment.config import PAPER_BERTSCORE, PAPER_CAPTIONER, AlignmentConfig


class AlignmentScorer:
    """Captions images with a VLM and scores them by BERTScore recall against the prompt's template.

    Args:
        config: the models and their options (:class:`~rewards.alignment.config.AlignmentConfig`).
    """

    def __init__(self, config: AlignmentConfig) -> None:
        if not isinstance(config, AlignmentConfig):
            raise TypeError(f"AlignmentScorer takes an AlignmentConfig, got {type(config).__name__}: "
                            "AlignmentScorer(AlignmentConfig(captioner=...))")
        self.config = config
        self.captioner = load_captioner(config.captioner, config.device, config.dtype)
        self.bertscore = load_bertscore(config.bertscore_model, config.bertscore_layers, config.device,
                                        config.batch_size)

    def captions(self, images: np.ndarray) -> list[str]:
        """Greedy captions of uint8 images (B, H, W, 3), batched."""
        from PIL import Image

        pil = [Image.fromarray(np.ascontiguousarray(image)) for image in images]
        kwargs = {"batch_size": self.config.batch_size, "return_full_text": False,
                  "generate_kwargs": {"max_new_tokens": self.config.max_new_tokens, "do_sample": False},
                  "processor_kwargs": {"padding": True, "truncation": True}}
        if getattr(self.captioner.processor, "chat_template", None):
            chats = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": self.config.question}]}] for image in pil]
            outputs = self.captioner(text=chats, **kwargs)
        else:
            outputs = self.captioner(images=pil, text=[self.config.question] * len(pil), **kwargs)
        return [(out[0] if isinstance(out, list) else out)["generated_text"].strip() for out in outputs]

    def recall(self, captions: list[str], prompts: list[str]) -> np.ndarray:
        """BERTScore recall of each caption against ``template.format(prompt=...)``; an empty caption scores 0."""
        scores = np.zeros(len(captions), dtype=np.float64)
        keep = [i for i, caption in enumerate(captions) if caption]
        if keep:
            references = [self.config.template.format(prompt=prompts[i]) for i in keep]
            _, recall, _ = self.bertscore.score([captions[i] for i in keep], references)
            scores[keep] = recall.double().cpu().numpy()
        return scores

    def __call__(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, list[str]]:
        """(rewards (B,), captions) for uint8 images (B, H, W, 3) and their prompts."""
        captions = self.captions(images)
        return self.recall(captions, list(prompts)), captions


def load_captioner(captioner: str, device: str, dtype: str | None):
    """An image-text-to-text pipeline; a clear error naming the fix when the model is not there."""
    import torch
    from transformers import pipeline

    try:
        pipe = pipeline("image-text-to-text", model=captioner, device=device,
                        dtype=getattr(torch, dtype) if dtype else None)
    except OSError as e:
        raise FileNotFoundError(
            f"alignment: could not load a captioning model from {captioner!r} ({e}). Pass a local folder of an "
            f"image-text-to-text model (the paper's: {PAPER_CAPTIONER}, fetched beforehand with "
            "`hf download`) as captioner="
        ) from e
    tokenizer = getattr(pipe.processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only VLMs generate after the prompt: pad on the left
    return pipe


def load_bertscore(model: str, layers: int | None, device: str, batch_size: int):
    """A ``bert_score.BERTScorer`` (recall without idf or rescaling, as in the paper)."""
    try:
        from bert_score import BERTScorer
        from bert_score.utils import model2layers
    except ImportError as e:
        raise ImportError("alignment: the BERTScore package is missing; pip install 'ddpo-env[alignment]'") from e
    if layers is None and model not in model2layers:
        raise ValueError(
            f"alignment: bertscore_layers is needed for {model!r} (which layer's embeddings to compare); "
            "e.g. 40 for microsoft/deberta-xlarge-mnli, 6 for a MiniLM-L6"
        )
    try:
        return BERTScorer(model_type=model, num_layers=layers, device=device, batch_size=batch_size)
    except OSError as e:
        raise FileNotFoundError(
            f"alignment: could not load a BERTScore model from {model!r} ({e}). Pass a local folder of a "
            f"transformers text encoder (the paper's: {PAPER_BERTSCORE}) as bertscore_model="
        ) from e
