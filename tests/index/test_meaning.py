"""Search that finds what people mean: the real all-MiniLM-L6-v2, a real index, on both backends.

Thirty images described as Florence-2 describes them, and queries a person
would type that share no word with the description they should find.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.config import SearchConfig
from daemon.index.meaning import Meaning, fuse, hybrid_search
from daemon.index.search import Hit, parse
from daemon.index.vectors import embed_missing
from daemon.model.embed import Embedder
from daemon.model.query_embed import NumpyEmbedder, query_encoder
from daemon.results import TaskResults
from daemon.testing.helpers import FakeAnalyzer, PipelineFactory, make_config

# What the model says of image i: a caption (also the description) and its object labels.
PICTURES = [
    ("A dog lying on a bed.", ["dog", "bed"]),
    ("A beach with waves crashing on the sand.", ["beach", "wave"]),
    ("A red car parked on the street.", ["car", "street"]),
    ("A cat sitting on a sofa.", ["cat", "sofa"]),
    ("A printed slip of paper with prices and a total.", ["paper"]),
    ("A plate of spaghetti with tomato sauce.", ["plate", "pasta"]),
    ("A snowy mountain peak under a blue sky.", ["mountain", "sky"]),
    ("A man riding a bicycle on a road.", ["man", "bicycle"]),
    ("A birthday cake with lit candles.", ["cake", "candle"]),
    ("A laptop computer on a wooden desk.", ["laptop", "desk"]),
    ("An airplane flying in the sky.", ["airplane"]),
    ("A bowl of fruit with apples and bananas.", ["apple", "banana", "bowl"]),
    ("A little girl playing in a park.", ["girl"]),
    ("A sailboat on a lake at sunset.", ["boat", "lake"]),
    ("A cup of coffee on a table.", ["cup", "table"]),
    ("A horse standing in a field.", ["horse"]),
    ("A train at a railway station.", ["train"]),
    ("A bookshelf full of books.", ["book", "shelf"]),
    ("A bride and groom at their wedding.", ["person", "dress"]),
    ("A soccer player kicking a ball.", ["person", "ball"]),
    ("A forest with tall trees.", ["tree"]),
    ("A city skyline at night with lights.", ["building"]),
    ("A bird sitting on a branch.", ["bird", "branch"]),
    ("A guitar leaning against a wall.", ["guitar"]),
    ("A kitchen with a stove and an oven.", ["stove", "oven"]),
    ("A waterfall in a jungle.", ["waterfall"]),
    ("A pizza with cheese and pepperoni.", ["pizza"]),
    ("A person swimming in a pool.", ["person", "pool"]),
    ("An old castle on a hill.", ["castle"]),
    ("A baby sleeping in a crib.", ["baby"]),
]

# What a person types -> the picture they mean; no word in common with its text.
MEANT = [
    ("puppy", 0),
    ("seaside", 1),
    ("automobile", 2),
    ("kitten couch", 3),
    ("receipt", 4),
    ("noodles", 5),
    ("alpine summit", 6),
    ("cyclist", 7),
    ("party dessert", 8),
    ("macbook", 9),
    ("jet", 10),
    ("fresh produce", 11),
    ("child at the playground", 12),
    ("yacht dusk", 13),
    ("espresso", 14),
    ("pony meadow", 15),
    ("locomotive", 16),
    ("library", 17),
    ("marriage ceremony", 18),
    ("football", 19),
    ("woods", 20),
    ("downtown", 21),
    ("sparrow", 22),
    ("musical instrument", 23),
    ("cooking appliance", 24),
    ("swimmer", 27),
    ("medieval fortress", 28),
    ("infant", 29),
]


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vector caches of a PostgreSQL index go to $XDG_CACHE_HOME: each test its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


class DescribingModel(FakeAnalyzer):
    """Describes picture i (its red channel is 8 * i) as PICTURES[i]."""

    def describe(self, im: Image.Image) -> TaskResults:
        caption, labels = PICTURES[round(im.getpixel((0, 0))[0] / 8)]  # type: ignore[index]
        return {
            "<CAPTION>": caption,
            "<MORE_DETAILED_CAPTION>": caption,
            "<OD>": {"bboxes": [[0, 0, 4, 4]] * len(labels), "labels": labels},
            "<OCR_WITH_REGION>": {"quad_boxes": [], "labels": ["TOTAL 12.50"] if "prices" in caption else []},
        }


def test_every_query_shares_no_word_with_what_it_means() -> None:
    for query, i in MEANT:
        caption, labels = PICTURES[i]
        words = {w.strip(".").lower() for w in caption.split()} | set(labels)
        assert not set(query.split()) & words, query


@pytest.fixture
def index(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory, minilm_folder: Path) -> Any:
    """The thirty pictures indexed by the pipeline and embedded by the real model."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(len(PICTURES)):
        Image.new("RGB", (32, 32), (8 * i, 40, 200)).save(inbox / f"img{i:02d}.png")
    config = make_config(tmp_path, index={"database": database}, metadata={"write": False})
    pipeline = open_test_pipeline(config, DescribingModel())
    pipeline.offer(sorted(inbox.iterdir()))
    pipeline.drain()
    folder = str(minilm_folder)
    assert embed_missing(pipeline.db, Embedder(folder)) == len(PICTURES)
    return pipeline.db, Meaning(SearchConfig(embedding_model=folder), Embedder), inbox


def top(db: Any, meaning: Meaning, query: str, mode: str, n: int = 3) -> list[str]:
    with db.transaction() as s:
        return [Path(h.path).name for h in hybrid_search(s, parse(query), limit=n, mode=mode, meaning=meaning)]


def test_people_find_what_they_mean(index: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db, meaning, _ = index
    found = {mode: sum(f"img{i:02d}.png" in top(db, meaning, q, mode) for q, i in MEANT) for mode in MODES_SHOWN}
    with capsys.disabled():
        print(
            "\nrelevance, intended image in the top 3 of "
            + ", ".join(f"{mode} {n}/{len(MEANT)}" for mode, n in found.items())
        )
    assert found["hybrid"] >= 0.9 * len(MEANT)
    assert found["words"] < found["hybrid"]


MODES_SHOWN = ("hybrid", "meaning", "words")


@pytest.mark.parametrize(("query", "first"), [("castle", 28), ("horse", 15), ("red car", 2), ("label:guitar", 23)])
def test_an_exact_word_still_comes_first(index: Any, query: str, first: int) -> None:
    db, meaning, _ = index
    assert top(db, meaning, query, "hybrid", n=5)[0] == f"img{first:02d}.png"


def test_filters_and_exclusions_hold_for_meaning_too(index: Any) -> None:
    db, meaning, inbox = index
    assert "img00.png" not in top(db, meaning, "puppy -dog", "hybrid", n=10)
    assert top(db, meaning, "puppy", "meaning", n=30)[0] == "img00.png"
    with db.transaction() as s:
        q = parse("puppy", folder=str(inbox / "elsewhere"))
        assert hybrid_search(s, q, limit=5, mode="hybrid", meaning=meaning) == []


def test_the_query_encoder_without_torch_finds_the_same(index: Any) -> None:
    """Queries embedded by numpy (``query_encoder``), against vectors the torch model stored: the same answers."""
    db, meaning, _ = index
    light = Meaning(meaning.config, query_encoder)
    assert light.usable() and isinstance(light._embedder, NumpyEmbedder)
    for query, _ in MEANT[:12]:
        for mode in ("meaning", "hybrid"):
            assert top(db, light, query, mode, n=5) == top(db, meaning, query, mode, n=5), (query, mode)


def test_without_the_embedding_model_search_is_by_words(index: Any, caplog: pytest.LogCaptureFixture) -> None:
    db, _, _ = index
    broken = Meaning(SearchConfig(embedding_model="/no/such/model"), Embedder)
    assert top(db, broken, "castle", "hybrid") == ["img28.png"]
    assert top(db, broken, "medieval fortress", "hybrid") == []
    assert broken.off_reason and "no such folder" in broken.off_reason
    assert sum("searching by words only" in r.message for r in caplog.records) == 1  # one warning, not one a query


def test_fusion_ranks_what_both_rankings_like_first() -> None:
    def hits(*ids: int) -> list[Hit]:
        return [Hit(path=f"/p/{i}", caption="", score=0.0, file_id=i) for i in ids]

    fused = fuse([hits(1, 2, 3), hits(3, 4, 1)], limit=4)
    assert [h.file_id for h in fused] == [1, 3, 2, 4]  # 1 and 3 in both; 1 higher on the first


# --- the daemon and the command line, with a tiny embedding model ---------------------------------


@pytest.fixture(scope="module")
def tiny_embedders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random embedding models (different names, so different vectors) built on disk."""
    from daemon.testing.tiny_embedder import build_tiny_embedder

    root = tmp_path_factory.mktemp("embedders")
    return build_tiny_embedder(root / "one", seed=0), build_tiny_embedder(root / "two", seed=1)


def embedded(db_path: Path, model: Path) -> int:
    from sqlalchemy import func, select

    from daemon.index.db import Database, Embedding

    db = Database(f"sqlite:///{db_path}")
    try:
        with db.transaction() as s:
            return s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == str(model))) or 0
    finally:
        db.close()


@pytest.mark.slow
def test_the_daemon_embeds_in_the_background_and_again_for_a_new_model(
    tmp_path: Path, tiny_embedders: tuple[Path, Path]
) -> None:
    from daemon.testing.helpers import RunningDaemon, copy_corpus, wait_until

    one, two = tiny_embedders
    files = copy_corpus(["pillow/hopper.jpg", "pillow/flower.jpg", "pillow/hopper.png"], tmp_path / "stage")
    for model in (one, two):  # a changed search.embedding_model: everything is embedded again, no Florence-2
        config = make_config(tmp_path, search={"semantic": True, "embedding_model": str(model)})
        d = RunningDaemon(config).started()
        try:
            if model == one:
                for f in files:
                    f.rename(d.inbox / f.name)
            assert wait_until(lambda m=model: embedded(tmp_path / "index.db", m) == 3, timeout=60), d.status()
            assert d.images_analyzed() == (3 if model == one else 0)
        finally:
            d.stop()


def test_reindex_status_and_search_modes_from_the_command_line(
    tmp_path: Path,
    tiny_embedders: tuple[Path, Path],
    open_test_pipeline: PipelineFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from daemon.cli import main
    from daemon.testing.helpers import copy_corpus, write_toml

    one, _ = tiny_embedders
    config = make_config(tmp_path, metadata={"write": False})
    pipeline = open_test_pipeline(config)
    pipeline.offer(copy_corpus(["pillow/hopper.jpg", "pillow/flower.jpg"], tmp_path / "inbox"))
    pipeline.drain()
    cfg = write_toml(
        tmp_path / "c.toml",
        {
            "index": {"database": str(tmp_path / "index.db")},
            "search": {"semantic": True, "embedding_model": str(one)},
        },
    )
    assert main(["--config", str(cfg), "status"]) == 0
    assert f"search by meaning: on ({one}: 0 image(s) embedded, 2 to do)" in capsys.readouterr().out
    assert main(["--config", str(cfg), "reindex", "--embeddings"]) == 0
    assert capsys.readouterr().err.strip() == f"embedded 2 image(s) with {one}"
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    semantic = json.loads(capsys.readouterr().out)["semantic"]
    assert (semantic["on"], semantic["embedded"], semantic["missing"]) == (True, 2, 0)
    for mode in ("meaning", "hybrid", "words"):
        assert main(["--config", str(cfg), "search", "picture", "--mode", mode, "--json"]) == 0
        found = json.loads(capsys.readouterr().out)
        assert {Path(h["path"]).name for h in found} == {"hopper.jpg", "flower.jpg"}, mode  # "a ... picture"

    off = write_toml(
        tmp_path / "off.toml",
        {
            "index": {"database": str(tmp_path / "index.db")},
            "search": {"semantic": True, "embedding_model": str(tmp_path / "no-model")},
        },
    )
    assert main(["--config", str(off), "status"]) == 0
    out = capsys.readouterr().out
    assert f"search by meaning: off ({tmp_path / 'no-model'}: no transformers checkpoint in that folder); " in out
    assert main(["--config", str(off), "search", "picture", "--json"]) == 0  # by words, one warning
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2
