"""The alignment scorer in another process or on another machine: ``python -m rewards.alignment serve
--captioner … --port 8765`` serves :class:`~rewards.alignment.scorer.AlignmentScorer` over HTTP (POST /score) and
:class:`RemoteAlignmentScorer` asks it. Images travel as raw uint8, so the remote score equals the local one."""

from __future__ import annotations

import argparse
import base64
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from rewards.alignment.config import AlignmentConfig


class RemoteAlignmentScorer:
    """Client of ``python -m rewards.alignment serve``: the same call as the local scorer."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def __call__(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, list[str]]:
        """(rewards (B,), captions) from the server."""
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


def make_server(scorer: Any, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server (not started) answering POST /score with {"scores", "captions"}; ``port=0`` picks a free one.
    Requests are scored one at a time (the models are not thread-safe)."""
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


def main(argv: list[str] | None = None) -> None:
    from rewards.alignment.scorer import AlignmentScorer

    parser = argparse.ArgumentParser(prog="python -m rewards.alignment",
                                     description="Serve the prompt-alignment reward over HTTP (POST /score).")
    parser.add_argument("command", choices=["serve"])
    AlignmentConfig.add_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    try:
        config = AlignmentConfig.from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    server = make_server(AlignmentScorer(config), args.host, args.port)
    print(f"alignment reward serving on http://{args.host}:{server.server_address[1]}/score", flush=True)
    server.serve_forever()
