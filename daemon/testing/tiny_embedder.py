"""Build a tiny random-weight sentence encoder (BERT) on disk, with no network.

Saved with ``save_pretrained`` (model and tokenizer) in the layout of
``sentence-transformers/all-MiniLM-L6-v2``, so ``daemon.embed.Embedder(folder)``
loads it through exactly the code that loads the real checkpoint. Its vectors
mean nothing; they are deterministic (fixed seed) and differ between texts.

Usage: ``python -m daemon.testing.tiny_embedder DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Common English and photo-caption words; any other word falls back to the
# single-letter pieces below (WordPiece), so no text becomes all [UNK].
WORDS = """
a an the of and or in on at to with from by for is are was be it this that these those there
what which who how not no yes one two three four five many some all each other more most
image photo picture shows showing view close up top side front back left right middle
man woman person people child children boy girl baby group crowd face hand hands
dog puppy cat kitten bird horse cow sheep animal animals fish
car automobile bus truck bicycle bike train boat ship plane road street traffic
house building room kitchen bed bedroom sofa couch chair table desk window door wall floor
tree trees flower flowers grass garden park field forest mountain mountains hill sky cloud clouds
sea seaside beach sand water river lake wave waves sun sunset snow rain
food fruit apple apples orange bread coffee cup bowl plate bottle glass
book paper document receipt invoice sign text menu screen computer phone grocery store shop
red blue green yellow white black brown grey gray dark bright light small large big old new
sitting standing lying walking running riding playing holding parked looking wearing
objects thing things pixels by picture
""".split()
DIGITS = [str(d) for d in range(10)]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
PUNCTUATION = list(".,:;!?-'\"()/&…")


def vocabulary() -> list[str]:
    """The tiny WordPiece vocabulary: specials, words, letters, digits, punctuation, continuation pieces."""
    pieces = SPECIAL + WORDS + LETTERS + DIGITS + PUNCTUATION + ["##" + c for c in LETTERS + DIGITS]
    return list(dict.fromkeys(pieces))  # deduplicated, order kept: the ids are stable


def build_tiny_embedder(dest: Path | str, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide BERT and its tokenizer into *dest*; returns *dest*."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(vocabulary())}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        # As many positions as the real model: long texts are cut at 256 tokens, never overflow.
        max_position_embeddings=512,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m daemon.testing.tiny_embedder DIR")
    print(build_tiny_embedder(sys.argv[1]))
