"""Prompt–image alignment (Black et al. 2024 §5.1): a vision-language model describes the image, and BERTScore
recall of that description against "The image contains {prompt}" is the reward.

    caption_i = VLM(image_i, "Answer concisely: what is going on in this image?")     (greedy decoding)
    r_i       = BERTScore-recall(candidate = caption_i, reference = template.format(prompt=prompt_i))

BERTScore recall = mean over the reference's tokens of the best cosine similarity to a caption token (contextual
embeddings of one layer of a text encoder; no idf, no baseline rescaling), computed by the ``bert-score`` package.
The paper used LLaVA (llava-1.5-7b) and ``microsoft/deberta-xlarge-mnli`` (layer 40). No weights ship with this
package: pass local folders or hub ids. The captioner is any transformers "image-text-to-text" model: with a chat
template (LLaVA, Qwen-VL, …) the question is asked as a user turn; without one (BLIP, GIT) the question is the
caption's text prefix (``question=""`` captions freely).

The pieces: :mod:`~rewards.alignment.config` (the options, once), :mod:`~rewards.alignment.scorer` (the models,
local), :mod:`~rewards.alignment.server` (``python -m rewards.alignment serve`` and its client) and
:mod:`~rewards.alignment.reward` (the scorer an env wrapper takes, local or remote).
"""

from rewards.alignment.config import PAPER_BERTSCORE, PAPER_CAPTIONER, QUESTION, TEMPLATE, AlignmentConfig
from rewards.alignment.reward import PromptAlignment
from rewards.alignment.scorer import AlignmentScorer
from rewards.alignment.server import RemoteAlignmentScorer, make_server

__all__ = ["PAPER_BERTSCORE", "PAPER_CAPTIONER", "QUESTION", "TEMPLATE", "AlignmentConfig", "AlignmentScorer",
           "PromptAlignment", "RemoteAlignmentScorer", "make_server"]
