"""Metadata: what to write (``plan``), exiftool (``exiftool``), and the writes and their records (``tagger``).

May import the index (the tagger records what it wrote) and the base; never the model or the service."""

from daemon.metadata.exiftool import MetadataWriter, remove_stale_temp_files, sidecar_path, target_for
from daemon.metadata.plan import Outcome, Wanted, plan, sanitize
from daemon.metadata.tagger import Tagger, TagRequest, retag, tag_file, tag_request

__all__ = [
    "MetadataWriter",
    "Outcome",
    "TagRequest",
    "Tagger",
    "Wanted",
    "plan",
    "remove_stale_temp_files",
    "retag",
    "sanitize",
    "sidecar_path",
    "tag_file",
    "tag_request",
    "target_for",
]
