"""The sentence-embedding model without torch: a BERT forward pass in numpy, for embedding queries.

``florence-watch search`` run without a daemon embeds one short query. Importing
torch and transformers for it costs more than a second before the model even
loads; a BERT encoder is a few matrix products, which numpy runs as fast for
a query of a few tokens. :class:`NumpyEmbedder` computes exactly what
``daemon.model.embed.Embedder`` computes (embeddings, LayerNorm, self-attention
with the padding masked, exact-erf GELU, mean pooling over the attention mask,
L2 normalisation), from the checkpoint's ``model.safetensors`` and
``tokenizer.json``. :func:`query_encoder` picks it when the checkpoint is such
a BERT, and the torch ``Embedder`` otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.model import hub

if TYPE_CHECKING:
    from daemon.model.embed import Embedder

log = logging.getLogger(__name__)

MAX_LENGTH = 256  # as daemon.model.embed.MAX_LENGTH: all-MiniLM-L6-v2 was trained on 256 tokens
FILES = ("config.json", "model.safetensors", "tokenizer.json")

# erf by Abramowitz & Stegun 7.1.26: |error| < 1.5e-7 by the formula, < 1e-6 evaluated in float32.
_ERF_P = 0.3275911
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)  # a5 .. a1


class NumpyEmbedder:
    """A BERT sentence encoder run by numpy (float32): texts in, unit vectors out, as ``Embedder``."""

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        """Load the checkpoint in *folder*; *name* is what the vectors are stored under (default: the folder).

        Raises ValueError (or OSError, KeyError) for a checkpoint this class cannot run.
        """
        from safetensors.numpy import load_file

        folder = Path(folder).expanduser()
        self.name = str(folder) if name is None else name
        self.device = "cpu"
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.layers, self.heads, self.dim, self.eps = _hyper_parameters(config)
        positions = int(config.get("max_position_embeddings") or MAX_LENGTH)
        self.max_length = min(MAX_LENGTH, positions)
        tensors = load_file(str(folder / "model.safetensors"))
        self.weights = _weights(tensors, self.layers)
        if self.weights["embeddings.word_embeddings.weight"].shape[1] != self.dim:
            raise ValueError("the word embeddings are not hidden_size wide")
        self.tokenizer = _tokenizer(folder / "tokenizer.json", self.max_length, config)

    def describe(self) -> str:
        return f"{self.name} on cpu, numpy ({self.dim}-d)"

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """One L2-normalised float32 row per text, shape ``(len(texts), dim)``; a blank text's row is zeros."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Texts of like length batched together: less padding to run through the model.
        order = sorted((i for i, t in enumerate(texts) if t.strip()), key=lambda i: len(texts[i]))
        step = max(1, batch_size)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            out[rows] = self._embed_batch([texts[i] for i in rows])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self._forward(ids, types, mask)
        # Mean over the real tokens only: padding must not move a text's vector.
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder's last hidden state, shape ``(batch, tokens, dim)``."""
        w = self.weights
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][: ids.shape[1]][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w, "embeddings.LayerNorm", self.eps)
        # Added to the attention scores: padded keys get nothing (softmax weight 0).
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        for i in range(self.layers):
            x = self._layer(x, bias, f"encoder.layer.{i}.")
        return x

    def _layer(self, x: np.ndarray, bias: np.ndarray, p: str) -> np.ndarray:
        """One transformer layer: self-attention, add & LayerNorm, GELU feed-forward, add & LayerNorm."""
        w, (batch, tokens, dim) = self.weights, x.shape
        head = dim // self.heads

        def split(t: np.ndarray) -> np.ndarray:  # (batch, tokens, dim) -> (batch, heads, tokens, head)
            return t.reshape(batch, tokens, self.heads, head).transpose(0, 2, 1, 3)

        q, k, v = (split(_linear(x, w, f"{p}attention.self.{n}")) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(head)) + bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
        x = _layer_norm(
            _linear(context, w, f"{p}attention.output.dense") + x, w, f"{p}attention.output.LayerNorm", self.eps
        )
        inner = gelu(_linear(x, w, f"{p}intermediate.dense"))
        return _layer_norm(_linear(inner, w, f"{p}output.dense") + x, w, f"{p}output.LayerNorm", self.eps)


def _hyper_parameters(config: dict[str, Any]) -> tuple[int, int, int, float]:
    """(layers, heads, hidden size, LayerNorm epsilon) of a BERT config; ValueError for anything else."""
    if config.get("model_type") != "bert":
        raise ValueError(f"model_type {config.get('model_type')!r}, not 'bert'")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config.get('hidden_act')!r}, not 'gelu' (exact erf)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type {config.get('position_embedding_type')!r}, not 'absolute'")
    layers, heads, dim = (int(config[k]) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    if layers < 1 or heads < 1 or dim % heads:
        raise ValueError(f"{heads} attention heads do not divide hidden_size {dim}")
    return layers, heads, dim, float(config.get("layer_norm_eps", 1e-12))


def _weights(tensors: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The encoder's tensors as float32, by their ``BertModel`` names (a ``bert.`` prefix dropped)."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    names = [f"embeddings.{n}_embeddings.weight" for n in ("word", "position", "token_type")]
    names += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    per_layer = [f"attention.self.{n}" for n in ("query", "key", "value")]
    per_layer += ["attention.output.dense", "attention.output.LayerNorm", "intermediate.dense"]
    per_layer += ["output.dense", "output.LayerNorm"]
    names += [f"encoder.layer.{i}.{n}.{t}" for i in range(layers) for n in per_layer for t in ("weight", "bias")]
    missing = [n for n in names if prefix + n not in tensors]
    if missing:
        raise KeyError(f"model.safetensors has no {missing[0]} (not a BERT encoder?)")
    return {n: np.ascontiguousarray(tensors[prefix + n], dtype=np.float32) for n in names}


def _tokenizer(path: Path, max_length: int, config: dict[str, Any]) -> Any:
    """The checkpoint's fast tokenizer, cut at *max_length* tokens and padded to the longest of a batch."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises bare Exception for a file it cannot read
        raise ValueError(f"tokenizer.json: {exc}") from exc
    padding = tokenizer.padding or {}
    pad_id = int(padding.get("pad_id", config.get("pad_token_id") or 0))
    pad_token = str(padding.get("pad_token") or tokenizer.id_to_token(pad_id) or "[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # no fixed length: the batch's longest
    return tokenizer


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``x @ W.T + b`` over the last axis, as one 2-D product."""
    weight, bias = w[name + ".weight"], w[name + ".bias"]
    flat = x.reshape(-1, x.shape[-1]) @ weight.T
    flat += bias
    return flat.reshape(*x.shape[:-1], weight.shape[0])


def _layer_norm(x: np.ndarray, w: dict[str, np.ndarray], name: str, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * w[name + ".weight"] + w[name + ".bias"]


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, within 1e-6 of ``math.erf`` in float32 (scipy is not a dependency)."""
    a = np.abs(x)
    t = 1.0 / (1.0 + np.float32(_ERF_P) * a)
    poly = np.zeros_like(t)
    for c in _ERF_A:
        poly = (poly + np.float32(c)) * t
    return np.copysign(1.0 - poly * np.exp(-a * a), x)


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU: ``x * Φ(x) = x/2 * (1 + erf(x/√2))`` (not the tanh approximation)."""
    return np.float32(0.5) * x * (np.float32(1.0) + erf(x * np.float32(1.0 / np.sqrt(2.0))))


def checkpoint_folder(name: str) -> Path | None:
    """The folder of *name* (a local folder, or a hub id's snapshot in the Hugging Face cache) when it
    holds a BERT checkpoint :class:`NumpyEmbedder` can run (config.json, model.safetensors,
    tokenizer.json); else None. Never touches the network."""
    copy = hub.bundled(name)
    if copy is not None:
        folder = copy
    elif hub.is_local(name):
        folder = Path(name).expanduser()
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if not isinstance(found, str):
            return None
        folder = Path(found).parent
    if not all((folder / f).is_file() for f in FILES):
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if isinstance(config, dict) and config.get("model_type") == "bert" else None


def query_encoder(name: str) -> NumpyEmbedder | Embedder:
    """The embedding model *name* for embedding queries: numpy when it can run it, else torch.

    A :class:`NumpyEmbedder` for a BERT checkpoint in safetensors with a fast tokenizer (no torch or
    transformers imported); ``daemon.model.embed.Embedder(name)`` for anything else, which raises
    ``EmbeddingModelUnavailableError`` for a model that is missing. ``.name`` is *name* either way.
    """
    from safetensors import SafetensorError

    folder = checkpoint_folder(name)
    if folder is not None:
        try:
            return NumpyEmbedder(folder, name=name)
        except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as exc:
            log.debug("%s: not run by numpy (%s); loading it with transformers", name, exc)
    from daemon.model.embed import Embedder

    return Embedder(name)
