"""TEMPORARY re-export while the redesign lands (removed before commit of the final step)."""
from .metadata import *  # noqa: F403
from .metadata.exiftool import MetadataWriter, remove_stale_temp_files  # noqa: F401
from .metadata.plan import cut_bytes, cut_words, sanitize  # noqa: F401
