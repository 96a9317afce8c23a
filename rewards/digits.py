"""Digit rewards for the embedded default model, from the shipped classifier: the probability of the prompted digit
(``digit_alignment``, in [0, 1]: near 1 already before training) and its logit margin over the runner-up
(``digit_margin``: unbounded, so it has room to rise), plus the agreement measure the training job reports.

The prompted digit is read from the prompt: exactly one numeral 0–9 or one word zero…nine ("a handwritten 7",
"the number seven"). A prompt that names no digit, or two different ones, raises an error that names it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from ddpo_env.models.digits import DIGIT_WORDS
from rewards.scorer import Scorer

_DIGIT = re.compile(r"(?<![0-9])[0-9](?![0-9])|\b(" + "|".join(DIGIT_WORDS) + r")\b", re.IGNORECASE)


def prompted_digit(prompt: str) -> int:
    """The digit a prompt asks for; ValueError if it names none or several different ones."""
    found = {int(m.group()) if m.group().isdigit() else DIGIT_WORDS.index(m.group().lower())
             for m in _DIGIT.finditer(prompt)}
    if len(found) != 1:
        raise ValueError(
            f"digit_alignment cannot tell which digit the prompt {prompt!r} asks for: name exactly one digit "
            "(0-9 or zero..nine)"
        )
    return found.pop()


class DigitAlignment(Scorer):
    """Reward p_classifier(prompted digit | image) in [0, 1], with the classifier shipped with the default model.

    Args:
        device: where the classifier runs ("cpu" when None; wrapped by name, the env's device).
    """

    name = "digit_alignment"

    def __init__(self, *, device: str | None = None) -> None:
        from ddpo_env.models.digit_classifier import load_classifier

        self.device = device or "cpu"
        self.classifier = load_classifier(device=self.device)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        digits = torch.tensor([prompted_digit(p) for p in prompts], device=self.classifier.device)
        probabilities = self.classifier.predict_proba(images)
        return probabilities.gather(1, digits[:, None]).squeeze(1).cpu().numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"


class DigitMargin(DigitAlignment):
    """Reward z_d − max_{j≠d} z_j: the classifier's logit of the prompted digit d over the strongest other digit
    (= log p_d − log max_{j≠d} p_j). Positive when the image shows the digit; it keeps rising as the digit gets
    clearer, where the probability saturates at 1."""

    name = "digit_margin"

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        digits = torch.tensor([prompted_digit(p) for p in prompts], device=self.classifier.device)
        return digit_margins(self.classifier, images, digits).cpu().numpy()


@torch.no_grad()
def digit_margins(classifier: Any, images: np.ndarray, digits: torch.Tensor) -> torch.Tensor:
    """z_d − max_{j≠d} z_j per image (B,) for uint8 images (B, H, W, 3) and digits (B,)."""
    from ddpo_env.models.digit_classifier import images_to_input

    logits = classifier(images_to_input(images, classifier.device))
    own = logits.gather(1, digits[:, None]).squeeze(1)
    others = logits.scatter(1, digits[:, None], float("-inf")).max(dim=1).values
    return own - others


def digit_agreement(images: np.ndarray, prompts: list[str]) -> float | None:
    """Share of images the shipped classifier reads as the digit their prompt names (None when a prompt names no
    single digit): how much of the digits a fine-tune has left readable."""
    try:
        digits = np.array([prompted_digit(p) for p in prompts])
    except ValueError:
        return None
    from ddpo_env.models.digit_classifier import load_classifier

    predicted = load_classifier().predict_proba(images).argmax(dim=1).numpy()
    return float((predicted == digits).mean())
