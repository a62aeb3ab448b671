"""Watched folders per host on one shared index: a folder one watcher drops is hidden only if no other watches it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from daemon.config import database_url
from daemon.index import folders
from daemon.index.db import Database, File


@pytest.fixture
def db(database: str) -> Iterator[Database]:
    d = Database(database_url(database))
    with d.transaction(write=True) as s:
        for path in ("/nas/photos/a.jpg", "/nas/photos/b.jpg", "/home/me/Pictures/c.jpg"):
            s.add(File(path=path, state="indexed"))
    yield d
    d.close()


def _states(db: Database) -> dict[str, str]:
    with db.transaction() as s:
        return dict(s.execute(select(File.path, File.state)).all())


def test_one_hosts_dropped_folder_hides_nothing_another_host_still_watches(db: Database) -> None:
    with db.transaction(write=True) as s:
        folders.register(s, "nas", ["/nas/photos"])
        folders.register(s, "desktop", ["/nas/photos", "/home/me/Pictures"])
    with db.transaction(write=True) as s:
        assert folders.register(s, "desktop", ["/home/me/Pictures"]) == 0  # the NAS still watches it
    assert set(_states(db).values()) == {"indexed"}
    with db.transaction(write=True) as s:
        assert folders.register(s, "nas", []) == 2  # now no one does
        assert folders.hidden(s) == [{"folder": "/nas/photos", "files": 2}]
    assert _states(db) == {
        "/nas/photos/a.jpg": "unwatched",
        "/nas/photos/b.jpg": "unwatched",
        "/home/me/Pictures/c.jpg": "indexed",
    }
    with db.transaction(write=True) as s:
        assert folders.forget_unwatched(s) == 2
        assert folders.hidden(s) == [] and folders.unwatched_folders(s) == []
    assert _states(db)["/nas/photos/a.jpg"] == "deleted"
