"""``search-provider``: GNOME Shell's and KRunner's interfaces on the session bus (dbus-fast).

The bus starts this process the first time a shell searches (the activation
file ``files`` installs) and it stays while it is asked; after IDLE_S of
silence it gives its name back and exits, and the bus starts it again at the
next search. The searching itself is ``answers``'s (the daemon's socket),
done on one thread beside the bus's event loop, so a slow answer never
holds up the bus.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# annotations at run time, and a deferred "-> None" would read as no valid signature.

import asyncio
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import BusType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

from daemon.config import Config
from daemon.desktop.answers import Answers, Result
from daemon.desktop.files import BUS_NAME, GNOME_PATH, KRUNNER_PATH
from daemon.desktop.launch import folder_of, open_page, open_with_desktop
from daemon.desktop.thumbs import file_uri, thumbnail
from daemon.errors import FlorenceWatchError

log = logging.getLogger(__name__)

IDLE_S = 600.0
THUMB_BUDGET_S = 0.3  # per GetResultMetas: thumbnails not made by then come as the generic icon next time
GENERIC_ICON = "image-x-generic"
POSSIBLE_MATCH = 30  # Plasma 5: QueryMatch::PossibleMatch; Plasma 6 reads it as a category relevance (Low)

Str = Annotated[str, DBusSignature("s")]
Strings = Annotated[list[str], DBusSignature("as")]
UInt = Annotated[int, DBusSignature("u")]
Metas = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
Matches = Annotated[list[list[Any]], DBusSignature("a(sssida{sv})")]
Actions = Annotated[list[list[str]], DBusSignature("a(sss)")]


class Provider:
    """What both interfaces share: the answers, the one thread they run on, and the idle clock."""

    def __init__(self, config: Config, config_file: str | None) -> None:
        self.config, self.config_file = config, config_file
        self.answers = Answers(config)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="desktop-search")
        # Beside the first search, not ahead of it: that needs none of it, the thumbnails after it do.
        self._warm = threading.Thread(target=_warm_up, name="desktop-warm-up", daemon=True)
        self._warm.start()
        self.last_call = time.monotonic()
        self._latest = 0  # the newest search asked for (counted on the bus's loop)
        self.busy = 0  # calls being answered: never left without their reply

    async def search(self, terms: list[str]) -> list[Result]:
        """The search for *terms*, unless a newer one came while it waited: a shell shows only the newest."""
        self._latest += 1
        mine = self._latest

        def run() -> list[Result]:
            return self.answers.search(terms) if mine == self._latest else []

        results: list[Result] = await self.run(run)
        return results

    async def run(self, fn: Any, *args: Any) -> Any:
        self.last_call = time.monotonic()
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.busy -= 1
            self.last_call = time.monotonic()

    def idle(self, idle_s: float) -> bool:
        return self.busy == 0 and time.monotonic() - self.last_call >= idle_s

    def metas(self, ids: list[str]) -> list[dict[str, Variant]]:
        """One meta per id, in order: GNOME Shell drops the whole batch when one is missing."""
        self._warm.join()  # the budget is for making thumbnails, not for importing Pillow
        deadline = time.monotonic() + THUMB_BUDGET_S
        out = []
        for result_id in ids:
            found = self.answers.result(result_id)
            if found is None:  # handed out by an earlier run of this provider
                out.append({"id": Variant("s", result_id), "name": Variant("s", "(search again)")})
                continue
            out.append(
                {
                    "id": Variant("s", found.id),
                    "name": Variant("s", found.name),
                    "description": Variant("s", found.description),
                    "gicon": Variant("s", self.icon(found, deadline)),
                }
            )
        return out

    def matches(self, found: list[Result]) -> list[list[Any]]:
        """KRunner's matches for *found*: (id, text, icon, type, relevance, properties)."""
        self._warm.join()
        deadline = time.monotonic() + THUMB_BUDGET_S
        return [
            [
                r.id,
                r.name,
                self.icon(r, deadline),
                POSSIBLE_MATCH,
                r.relevance,
                {
                    "subtext": Variant("s", r.description),
                    "category": Variant("s", "Photos"),
                    "urls": Variant("as", [file_uri(r.path)]),  # dragging a match drops the file
                },
            ]
            for r in found
        ]

    @staticmethod
    def icon(result: Result, deadline: float) -> str:
        """The thumbnail's path (both shells load an absolute path as an icon), else the generic icon's name."""
        return thumbnail(result.path, deadline) or GENERIC_ICON

    def activate(self, result_id: str, action: str = "") -> None:
        path = self.answers.openable(result_id)
        if path is not None:
            open_with_desktop(folder_of(path) if action == "folder" else path)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.answers.close()


def _warm_up() -> None:
    """Import what the first thumbnail needs (Pillow, its HEIF and RAW readers): a few hundred ms."""
    import PIL.PngImagePlugin  # noqa: F401

    import daemon.imaging  # noqa: F401


class GnomeSearch(ServiceInterface):
    """org.gnome.Shell.SearchProvider2, as GNOME Shell's overview calls it."""

    def __init__(self, provider: Provider) -> None:
        super().__init__("org.gnome.Shell.SearchProvider2")
        self.p = provider

    @dbus_method()
    async def GetInitialResultSet(self, terms: Strings) -> Strings:
        return [r.id for r in await self.p.search(terms)]

    @dbus_method()
    async def GetSubsearchResultSet(self, previous: Strings, terms: Strings) -> Strings:
        # Ranked afresh for the longer query, then narrowed to what was shown: GNOME Shell's meaning.
        shown = set(previous)
        return [r.id for r in await self.p.search(terms) if r.id in shown]

    @dbus_method()
    async def GetResultMetas(self, ids: Strings) -> Metas:
        metas: list[dict[str, Variant]] = await self.p.run(self.p.metas, ids)
        return metas

    @dbus_method()
    async def ActivateResult(self, result_id: Str, terms: Strings, timestamp: UInt) -> None:
        await self.p.run(self.p.activate, result_id)

    @dbus_method()
    async def LaunchSearch(self, terms: Strings, timestamp: UInt) -> None:
        from daemon.desktop.answers import query_text

        # Its own thread: starting the web page may take seconds, and searches must not wait behind it.
        args = (self.p.config, self.p.config_file, query_text(terms))
        threading.Thread(target=open_page, args=args, name="desktop-page", daemon=True).start()


class KRunner(ServiceInterface):
    """org.kde.krunner1, as KRunner's D-Bus runner calls it."""

    def __init__(self, provider: Provider) -> None:
        super().__init__("org.kde.krunner1")
        self.p = provider

    @dbus_method()
    def Actions(self) -> Actions:
        return [["folder", "Open the containing folder", "document-open-folder"]]

    @dbus_method()
    async def Match(self, query: Str) -> Matches:
        matches: list[list[Any]] = await self.p.run(self.p.matches, await self.p.search([query]))
        return matches

    @dbus_method()
    async def Run(self, match_id: Str, action_id: Str) -> None:
        await self.p.run(self.p.activate, match_id, action_id)

    @dbus_method()
    def Teardown(self) -> None:
        """KRunner closed: nothing to let go (the handed-out ids stay for a reopened KRunner)."""


async def serve(config: Config, config_file: str | None, idle_s: float = IDLE_S) -> None:
    """Own the bus name until *idle_s* pass without a call, or SIGTERM."""
    try:
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    except Exception as exc:  # noqa: BLE001 -- no session bus (a plain ssh login): one clear line
        raise FlorenceWatchError(f"cannot reach the session bus: {exc}") from None
    provider = Provider(config, config_file)
    bus.export(GNOME_PATH, GnomeSearch(provider))
    bus.export(KRUNNER_PATH, KRunner(provider))
    try:
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise FlorenceWatchError(f"another process owns {BUS_NAME} on this session bus")
        log.info("desktop search: %s on the session bus", BUS_NAME)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and not provider.idle(idle_s) and bus.connected:
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(5.0, idle_s))
            except TimeoutError:
                pass
        # The name first: a search arriving now starts a new provider instead of meeting a closing one;
        # then the calls already here get their answers before the connection goes.
        if bus.connected:
            await bus.release_name(BUS_NAME)
        for _ in range(100):
            if provider.busy == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        bus.disconnect()
        provider.close()


def main(config: Config, config_file: Path | None, idle_s: float = IDLE_S) -> int:
    asyncio.run(serve(config, str(config_file) if config_file else None, idle_s))
    return 0
