"""The LAION aesthetic score (Black et al. 2024 §5.1): an MLP on L2-normalised CLIP ViT-L/14 image embeddings.

    score = MLP(e / ‖e‖),  e = visual_projection(CLIP vision tower(image))  (768-d for ViT-L/14)
    MLP: 768 → 1024 → 128 → 64 → 16 → 1, linear layers with dropout in between (the published predictor's layout,
    so its state dict — ``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7`` — loads as is).

No weights ship with this package or PyPI: pass a local CLIP folder or hub id (``clip_model``) and the predictor's
weights file (``mlp_weights``: .pth / .pt state dict or .safetensors). Tested offline with a tiny random CLIP and a
random MLP of the real shape.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from rewards.scorer import Scorer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AestheticMLP(nn.Module):
    """The LAION "improved aesthetic predictor" head: (B, 768) → (B, 1)."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def clip_pixels(images: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """CLIP preprocessing, batched in torch: uint8 (B, H, W, 3) → resize the short side to ``size`` (bicubic),
    centre crop ``size``², normalise with CLIP's mean/std → float (B, 3, size, size)."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = nn.functional.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                  mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_mlp(path: str | os.PathLike, embed_dim: int) -> AestheticMLP:
    """The predictor head from a .pth/.pt state dict or a .safetensors file; clear errors when it is not there."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"aesthetic: no predictor weights at {path!r}. Download the LAION aesthetic predictor's MLP "
            "(e.g. sac+logos+ava1-l14-linearMSE.pth) and pass its path as mlp_weights="
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    mlp = AestheticMLP(embed_dim)
    mlp.load_state_dict(state)
    return mlp.eval()


class AestheticScore(Scorer):
    """Reward = LAION aesthetic score of the terminal image (about 1–10 on real photos).

    Args:
        clip_model: a local folder or hub id of a transformers ``CLIPModel`` (ViT-L/14 for the real predictor).
        mlp_weights: path of the predictor head's weights.
        device: where CLIP and the head run ("cpu" when None; wrapped by name, the env's device).
        batch_size: images per CLIP forward.
    """

    name = "aesthetic"

    def __init__(self, *, clip_model: str, mlp_weights: str, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import CLIPModel

        device = device or "cpu"
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"aesthetic: batch_size must be a positive int, got {batch_size!r}")
        try:
            clip = CLIPModel.from_pretrained(clip_model)
        except OSError as e:
            raise FileNotFoundError(
                f"aesthetic: could not load a CLIP model from {clip_model!r} ({e}). Pass a local folder of "
                "openai/clip-vit-large-patch14 (or its hub id on a machine with the network) as clip_model="
            ) from e
        self.vision = clip.vision_model.to(device).eval().requires_grad_(False)
        self.projection = clip.visual_projection.to(device).eval().requires_grad_(False)
        self.image_size = int(clip.config.vision_config.image_size)
        self.mlp = load_mlp(mlp_weights, clip.config.projection_dim).to(device)
        self.clip_model, self.mlp_weights = clip_model, mlp_weights
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (B, projection_dim)."""
        pixels = clip_pixels(images, self.image_size, self.device)
        embeddings = self.projection(self.vision(pixel_values=pixels).pooler_output)
        return embeddings / embeddings.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        scores = [self.mlp(self.embed(images[i : i + self.batch_size])).squeeze(1)
                  for i in range(0, len(images), self.batch_size)]
        return torch.cat(scores).cpu().numpy()

    def __repr__(self) -> str:
        return f"AestheticScore(clip_model={self.clip_model!r}, mlp_weights={self.mlp_weights!r})"
