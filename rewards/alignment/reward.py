"""The prompt-alignment reward as a scorer: local models or a server, the captions of the last batch kept."""

from __future__ import annotations

from typing import Any

import numpy as np

from rewards.alignment.config import AlignmentConfig
from rewards.scorer import Scorer


class PromptAlignment(Scorer):
    """Reward = BERTScore recall of a VLM's description of the image against "The image contains {prompt}" (0–1).

    ``PromptAlignment(captioner=…, bertscore_model=…, …)`` loads the models here (the options are
    :class:`~rewards.alignment.config.AlignmentConfig`'s fields; or pass ``config=``); ``PromptAlignment(server=url)``
    asks a running ``python -m rewards.alignment serve``, where the models and their options live. The last
    batch's captions are kept in ``last_captions``.
    """

    name = "alignment"

    def __init__(self, config: AlignmentConfig | None = None, *, server: str | None = None,
                 device: str | None = None, **options: Any) -> None:
        if server is not None:
            if config is not None or options:
                given = sorted(options) if options else ["config"]
                raise ValueError(f"alignment: with server= the models and their options live in the server (start "
                                 f"it with `python -m rewards.alignment serve --captioner ...`); drop {given}")
            from rewards.alignment.server import RemoteAlignmentScorer

            self.scorer: Any = RemoteAlignmentScorer(server)
        else:
            if config is None:
                if "captioner" not in options:
                    raise ValueError("alignment: pass either captioner= (a VLM folder or hub id) or server= (a URL), "
                                     "not neither")
                config = AlignmentConfig.from_options(**options, **({"device": device} if device else {}))
            elif options:
                raise ValueError(f"alignment: pass the options in config= or as keywords, not both ({sorted(options)})")
            from rewards.alignment.scorer import AlignmentScorer

            self.scorer = AlignmentScorer(config)
        self.config, self.server = config, server
        self.last_captions: list[str] = []

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        scores, self.last_captions = self.scorer(images, prompts)
        return scores

    def __repr__(self) -> str:
        return f"PromptAlignment(server={self.server!r})" if self.server else f"PromptAlignment({self.config!r})"
