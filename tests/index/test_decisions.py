"""A person's edits are final: a metadata edit runs no model and never brings back what they removed.

The real daemon (watchdog, queue, real exiftool) runs in a thread of the
test with a fake model that counts its runs; the person edits the file in
place with exiftool, as Lightroom and digiKam do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import Config
from daemon.index import records
from daemon.results import TaskResults
from daemon.testing.helpers import (
    FakeAnalyzer,
    RunningDaemon,
    copy_corpus,
    make_config,
    raw_with_preview,
    read_tags,
    wait_until,
    write_config,
)

SUBJ, IPTC_KW, HIER = "XMP-dc:Subject", "IPTC:Keywords", "XMP-lr:HierarchicalSubject"
DESC = "XMP-dc:Description"
PERSON_DESC = "Our sofa on holiday, no cat in sight"


class TaggingModel(FakeAnalyzer):
    """Sees a cat and a sofa in every image (a newer version also a cushion)."""

    def __init__(self, model_id: str = "fake-florence", labels: tuple[str, ...] = ("cat", "sofa")) -> None:
        super().__init__()
        self.model_id, self.labels = model_id, labels

    def describe(self, im: Any) -> TaskResults:
        results = super().describe(im)
        results["<OD>"] = {"bboxes": [[0, 0, 4, 4]] * len(self.labels), "labels": list(self.labels)}
        return results


# (name, how to make the file, where our tags go, the tags the person edits there)
CASES = {
    "jpeg": ("photo.jpg", lambda d: copy_corpus(["pillow/hopper.jpg"], d)[0], "", (SUBJ, IPTC_KW, HIER)),
    "png": ("photo.png", lambda d: copy_corpus(["pillow/hopper.png"], d)[0], "", (SUBJ, HIER)),
    "raw sidecar": ("Nikon.nef", lambda d: raw_with_preview("exiftool/Nikon.nef", d), ".xmp", (SUBJ, HIER)),
}


def person_edits(target: Path, keyword_tags: tuple[str, ...], description_tags: list[str]) -> None:
    """Remove our keyword 'cat', add 'holiday', write their own description: in place, as photo tools do."""
    args = [f"-{t}-=cat" for t in keyword_tags] + [f"-{t}+=holiday" for t in keyword_tags]
    args += [f"-{t}={PERSON_DESC}" for t in description_tags]
    subprocess.run(["exiftool", "-overwrite_original_in_place", *args, str(target)], check=True, capture_output=True)


def show_json(cfg: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["--config", str(cfg), "show", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def decided(d: RunningDaemon, path: Path) -> frozenset[str]:
    with d.db.transaction() as s:
        f = records.file_by_path(s, str(path))
        return records.decisions_for(s, f.image_id if f else None)[0]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, Path]]:
    config = make_config(tmp_path)
    write_config(tmp_path, "not-loaded")  # the same index and inbox, for the CLI
    yield config, tmp_path / "config.toml"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_removed_keyword_stays_removed(
    case: str, setup: tuple[Config, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, cfg = setup
    name, make, sidecar, keyword_tags = CASES[case]
    d = RunningDaemon(config, TaggingModel()).started()
    try:
        [path] = [shutil.move(make(tmp_path / "stage"), d.inbox / name)]
        path = Path(path)
        target = Path(f"{path}{sidecar}")
        d.settled(1)
        assert {"cat", "sofa"} <= set(read_tags(target)[SUBJ])
        before = read_tags(target)
        description_tags = [t for t in (DESC, "IFD0:ImageDescription", "IPTC:Caption-Abstract") if t in before]
        person_edits(target, keyword_tags, description_tags)
        assert wait_until(lambda: "cat" in decided(d, path), timeout=30), d.status()
        d.settled(1)
        assert d.images_analyzed() == 1  # the edit ran no model
    finally:
        d.stop()
    assert_persons_edit_kept(target)
    assert show_json(cfg, path, capsys)["rejected"] == ["cat"]
    assert main(["--config", str(cfg), "show", str(path)]) == 0
    shown = "rejected     cat, (description)   (removed by a person: never written again)"
    assert shown in capsys.readouterr().out.splitlines()

    d = RunningDaemon(config, TaggingModel()).started()  # a restart
    try:
        d.settled(1)
        assert d.images_analyzed() == 0
    finally:
        d.stop()
    assert_persons_edit_kept(target)
    assert main(["--config", str(cfg), "retag"]) == 0
    assert_persons_edit_kept(target)

    # A newer model, shown a copy of the picture elsewhere: it runs, and still no cat.
    newer = TaggingModel("fake-florence-v2", ("cat", "sofa", "cushion"))
    d = RunningDaemon(config, newer).started()
    try:
        (d.inbox / "copies").mkdir()
        copy = Path(shutil.copy2(path, d.inbox / "copies" / name))
        d.settled(2)
        assert d.images_analyzed() == 1
    finally:
        d.stop()
    # A RAW file's copy has no sidecar yet: it gets ours, without what the person decided against.
    assert_persons_edit_kept(Path(f"{copy}{sidecar}"), also="cushion", persons=not sidecar)
    assert main(["--config", str(cfg), "retag"]) == 0
    assert_persons_edit_kept(target, also="cushion")


def assert_persons_edit_kept(target: Path, also: str = "", persons: bool = True) -> None:
    """No cat; sofa (and *also*) ours; the person's holiday and description, or (not *persons*) no description."""
    tags = read_tags(target)
    for key in (SUBJ, IPTC_KW, HIER):
        if key in tags:
            assert "cat" not in tags[key], (key, tags[key])
            expected = {"sofa", *([also] if also else []), *(["holiday"] if persons else [])}
            assert expected <= set(tags[key]), (key, tags[key])
    assert tags.get(DESC) == (PERSON_DESC if persons else None)
