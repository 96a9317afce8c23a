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

The models can live in another process or on another machine: ``python -m rewards.alignment serve --captioner …
--port 8765`` serves :class:`AlignmentScorer` over HTTP and ``PromptAlignment(env, server="http://host:8765")``
asks it (images travel as raw uint8, so the remote score equals the local one).
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from rewards.base import TerminalReward

QUESTION = "Answer concisely: what is going on in this image?"
TEMPLATE = "The image contains {prompt}"
PAPER_CAPTIONER = "llava-hf/llava-1.5-7b-hf"
PAPER_BERTSCORE = "microsoft/deberta-xlarge-mnli"


class AlignmentScorer:
    """Captions images with a VLM and scores them by BERTScore recall against the prompt's template.

    Args:
        captioner: folder or hub id of a transformers image-text-to-text model (the paper: LLaVA 1.5 7B).
        bertscore_model: folder or hub id of the text encoder for BERTScore.
        bertscore_layers: which layer's embeddings BERTScore uses; may be omitted for models the ``bert-score``
            package knows by hub id (e.g. 40 for microsoft/deberta-xlarge-mnli).
        question: what the VLM is asked (or the caption prefix for a model without a chat template).
        template: the reference sentence; ``{prompt}`` is replaced by the episode's prompt.
        max_new_tokens: caption length limit.
        batch_size: images per VLM forward and sentences per BERTScore forward.
        device: where both models run ("cpu", "cuda", "cuda:1").
        dtype: the VLM's dtype ("float16", "bfloat16"); default float32.
    """

    def __init__(
        self,
        captioner: str,
        bertscore_model: str = PAPER_BERTSCORE,
        bertscore_layers: int | None = None,
        *,
        question: str = QUESTION,
        template: str = TEMPLATE,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> None:
        for key, value in {"max_new_tokens": max_new_tokens, "batch_size": batch_size}.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"alignment: {key} must be a positive int, got {value!r}")
        if "{prompt}" not in template:
            raise ValueError(f"alignment: template must contain '{{prompt}}', got {template!r}")
        self.question, self.template = question, template
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.captioner = load_captioner(captioner, device, dtype)
        self.bertscore = load_bertscore(bertscore_model, bertscore_layers, device, batch_size)

    def captions(self, images: np.ndarray) -> list[str]:
        """Greedy captions of uint8 images (B, H, W, 3), batched."""
        from PIL import Image

        pil = [Image.fromarray(np.ascontiguousarray(image)) for image in images]
        kwargs = {"batch_size": self.batch_size, "return_full_text": False,
                  "generate_kwargs": {"max_new_tokens": self.max_new_tokens, "do_sample": False},
                  "processor_kwargs": {"padding": True, "truncation": True}}
        if getattr(self.captioner.processor, "chat_template", None):
            chats = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": self.question}]}] for image in pil]
            outputs = self.captioner(text=chats, **kwargs)
        else:
            outputs = self.captioner(images=pil, text=[self.question] * len(pil), **kwargs)
        return [(out[0] if isinstance(out, list) else out)["generated_text"].strip() for out in outputs]

    def recall(self, captions: list[str], prompts: list[str]) -> np.ndarray:
        """BERTScore recall of each caption against ``template.format(prompt=...)``; an empty caption scores 0."""
        scores = np.zeros(len(captions), dtype=np.float64)
        keep = [i for i, caption in enumerate(captions) if caption]
        if keep:
            references = [self.template.format(prompt=prompts[i]) for i in keep]
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
    if layers is not None and not (isinstance(layers, int) and layers >= 1):
        raise ValueError(f"alignment: bertscore_layers must be a positive int, got {layers!r}")
    try:
        return BERTScorer(model_type=model, num_layers=layers, device=device, batch_size=batch_size)
    except OSError as e:
        raise FileNotFoundError(
            f"alignment: could not load a BERTScore model from {model!r} ({e}). Pass a local folder of a "
            f"transformers text encoder (the paper's: {PAPER_BERTSCORE}) as bertscore_model="
        ) from e


class RemoteAlignmentScorer:
    """Client of ``python -m rewards.alignment serve``: the same call as :class:`AlignmentScorer`."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def __call__(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, list[str]]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        body = json.dumps({"shape": list(images.shape), "pixels": base64.b64encode(images.tobytes()).decode(),
                           "prompts": list(prompts)}).encode()
        request = urllib.request.Request(self.url + "/score", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except OSError as e:
            raise ConnectionError(
                f"alignment: the scoring server at {self.url} did not answer ({e}). Start it with "
                "`python -m rewards.alignment serve --captioner ... --port ...` or drop server="
            ) from e
        return np.asarray(answer["scores"], dtype=np.float64), list(answer["captions"])


def make_server(scorer: AlignmentScorer, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server (not started) answering POST /score with {"scores", "captions"}; ``port=0`` picks a free one.
    Requests are scored one at a time (the models are not thread-safe)."""
    import threading

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/score":
                self.send_error(404, "POST /score")
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = np.frombuffer(base64.b64decode(request["pixels"]), dtype=np.uint8).reshape(request["shape"])
            with lock:
                scores, captions = scorer(images, request["prompts"])
            body = json.dumps({"scores": scores.tolist(), "captions": captions}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
            pass

    return ThreadingHTTPServer((host, port), Handler)


class PromptAlignment(TerminalReward):
    """Reward = BERTScore recall of a VLM's description of the image against "The image contains {prompt}" (0–1).

    Args:
        env: the env to wrap.
        captioner, bertscore_model, bertscore_layers, question, template, max_new_tokens, batch_size, dtype:
            see :class:`AlignmentScorer`.
        device: where the models run (default: the env's device).
        server: URL of a running ``python -m rewards.alignment serve``; the models then load there, not here.

    The last batch's captions are kept in ``last_captions``.
    """

    name = "alignment"

    def __init__(
        self,
        env: Any,
        *,
        captioner: str | None = None,
        bertscore_model: str = PAPER_BERTSCORE,
        bertscore_layers: int | None = None,
        question: str = QUESTION,
        template: str = TEMPLATE,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        server: str | None = None,
        weight: float = 1.0,
    ) -> None:
        if (captioner is None) == (server is None):
            raise ValueError("alignment: pass either captioner= (a VLM folder or hub id) or server= (a URL), not "
                             f"{'both' if server else 'neither'}")
        if device is None:
            device = str(env.unwrapped.device) if env is not None and hasattr(env.unwrapped, "device") else "cpu"
        if server is not None:
            self.scorer: AlignmentScorer | RemoteAlignmentScorer = RemoteAlignmentScorer(server)
        else:
            self.scorer = AlignmentScorer(captioner, bertscore_model, bertscore_layers, question=question,
                                          template=template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          device=device, dtype=dtype)
        self.last_captions: list[str] = []
        super().__init__(env, weight=weight, captioner=captioner, bertscore_model=bertscore_model,
                         bertscore_layers=bertscore_layers, question=question, template=template,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, dtype=dtype,
                         server=server)

    def score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        scores, self.last_captions = self.scorer(images, prompts)
        return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rewards.alignment",
                                     description="Serve the prompt-alignment reward over HTTP (POST /score).")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--captioner", required=True, help="folder or hub id of an image-text-to-text model")
    parser.add_argument("--bertscore-model", default=PAPER_BERTSCORE)
    parser.add_argument("--bertscore-layers", type=int, default=None)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=[None, "float16", "bfloat16"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    scorer = AlignmentScorer(args.captioner, args.bertscore_model, args.bertscore_layers, question=args.question,
                             template=args.template, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    server = make_server(scorer, args.host, args.port)
    print(f"alignment reward serving on http://{args.host}:{server.server_address[1]}/score", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
