"""The alignment reward's options, written once: the local scorer, the server's command line and the job's
``reward_options`` all read :class:`AlignmentConfig`."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

QUESTION = "Answer concisely: what is going on in this image?"
TEMPLATE = "The image contains {prompt}"
PAPER_CAPTIONER = "llava-hf/llava-1.5-7b-hf"
PAPER_BERTSCORE = "microsoft/deberta-xlarge-mnli"
DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class AlignmentConfig:
    """What the prompt-alignment reward runs: a captioning VLM and a BERTScore text encoder."""

    captioner: str = field(metadata={"help": f"folder or hub id of an image-text-to-text model (the paper: "
                                             f"{PAPER_CAPTIONER})"})
    bertscore_model: str = field(default=PAPER_BERTSCORE,
                                 metadata={"help": "folder or hub id of the text encoder for BERTScore"})
    bertscore_layers: int | None = field(
        default=None, metadata={"help": "which layer's embeddings BERTScore compares; may be omitted for models the "
                                        "bert-score package knows by hub id (e.g. 40 for deberta-xlarge-mnli)"})
    question: str = field(default=QUESTION, metadata={"help": "what the VLM is asked (the caption prefix for a model "
                                                              "without a chat template)"})
    template: str = field(default=TEMPLATE, metadata={"help": "the reference sentence; {prompt} is the episode's "
                                                              "prompt"})
    max_new_tokens: int = field(default=32, metadata={"help": "caption length limit"})
    batch_size: int = field(default=8, metadata={"help": "images per VLM forward, sentences per BERTScore forward"})
    device: str = field(default="cpu", metadata={"help": "where both models run (cpu, cuda, cuda:1)"})
    dtype: str | None = field(default=None, metadata={"help": f"the VLM's dtype, one of {DTYPES} (default float32)"})

    def __post_init__(self) -> None:
        if not (isinstance(self.captioner, str) and self.captioner):
            raise ValueError(f"alignment: captioner must be a model folder or hub id, got {self.captioner!r}")
        for key in ("max_new_tokens", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"alignment: {key} must be a positive int, got {value!r}")
        if self.bertscore_layers is not None and not (isinstance(self.bertscore_layers, int)
                                                      and self.bertscore_layers >= 1):
            raise ValueError(f"alignment: bertscore_layers must be a positive int, got {self.bertscore_layers!r}")
        if "{prompt}" not in self.template:
            raise ValueError(f"alignment: template must contain '{{prompt}}', got {self.template!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"alignment: dtype must be one of {DTYPES} or None, got {self.dtype!r}")

    @classmethod
    def from_options(cls, **options) -> AlignmentConfig:
        """The config from keyword options, an unknown one named with the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"alignment: unknown option(s) {unknown}; the options are {sorted(known)}")
        return cls(**options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field (``--max-new-tokens``), with the field's default and help."""
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = int if f.name in ("bertscore_layers", "max_new_tokens", "batch_size") else str
            if f.default is dataclasses.MISSING:
                parser.add_argument(flag, type=kind, required=True, help=f.metadata["help"])
            else:
                parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"],
                                    choices=DTYPES if f.name == "dtype" else None)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> AlignmentConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
