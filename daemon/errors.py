"""Typed errors: the core raises these; ``cli.main`` turns them into messages.

Each carries what a person needs to act: the file or key involved and the
reason, in words. Nothing here prints or exits.
"""

from __future__ import annotations

from pathlib import Path


class FlorenceWatchError(Exception):
    """Base class of every error florence-watch reports to a person."""


class ConfigError(FlorenceWatchError):
    """A bad key or value in a configuration file."""

    def __init__(self, source: str | Path, key: str, reason: str) -> None:
        self.source, self.key, self.reason = str(source), key, reason
        super().__init__(f"{self.source}: {key}: {reason}")


class ModelUnavailableError(FlorenceWatchError):
    """The Florence-2 checkpoint cannot be loaded (not cached, no network, bad folder)."""

    def __init__(self, model: str, reason: str) -> None:
        self.model, self.reason = model, reason
        super().__init__(
            f"cannot load the model {model!r}: {reason}. "
            "Connect to the internet once so it can be downloaded into the Hugging Face cache, "
            "or set model.name in config.toml to a local folder holding a Florence-2 checkpoint"
        )


class ImageError(FlorenceWatchError):
    """One file cannot be read or decoded as an image."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


class MetadataError(FlorenceWatchError):
    """exiftool could not read or write one file's metadata."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


class DatabaseError(FlorenceWatchError):
    """The index database cannot be opened or written."""

    def __init__(self, location: str, reason: str) -> None:
        self.location, self.reason = location, reason
        super().__init__(f"index database {location}: {reason}")


class NotIndexedError(FlorenceWatchError):
    """A path the user asked about is not in the index."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: not in the index (is it inside a watched folder? try `florence-watch scan`)")
