"""Pausing: by hand (``florence-watch pause [--for 2h]``, ``resume``) or by rule (battery, GPU in use).

While paused the daemon keeps watching and queueing, but runs no model,
writes no file and gives its model's memory back. A pause by hand is a small
JSON file in ``$XDG_STATE_HOME/florence-watch``: the command and the daemon
see the same one, and it outlives a restart. The rules ([pause] in the
config) are looked at every RULES_S.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from daemon.config import PauseConfig, xdg_home
from daemon.errors import FlorenceWatchError

log = logging.getLogger(__name__)

POWER_SUPPLY = Path("/sys/class/power_supply")
RULES_S = 10.0  # nvidia-smi takes ~0.1 s: the rules are not looked at on every turn of the loop
CHECK_S = 0.25  # the pause file is read at most this often (the model asks between decoding steps)
MAX_PAUSE_S = 30 * 86400
# A pause for a busy GPU ends only once others' share is this much below the threshold: no flapping.
GPU_HYSTERESIS = 0.8


def state_file() -> Path:
    return xdg_home("STATE") / "florence-watch" / "pause.json"


@dataclass(frozen=True)
class Paused:
    """Why the daemon is paused, and until when (None: until ``resume``, or while the rule holds)."""

    reason: str
    until: float | None = None

    def describe(self, now: float | None = None) -> str:
        """ "paused until 18:00", "paused until `florence-watch resume`", "paused: on battery"."""
        if self.reason != "by hand":
            return f"paused: {self.reason}"
        if self.until is None:
            return "paused until `florence-watch resume`"
        now = time.time() if now is None else now
        fmt = "%H:%M" if time.localtime(self.until)[:3] == time.localtime(now)[:3] else "%Y-%m-%d %H:%M"
        return "paused until " + time.strftime(fmt, time.localtime(self.until))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")


def parse_duration(text: str) -> float:
    """ "2h", "90m", "1h30m", "45s", "1d" -> seconds; a bare number is minutes."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text) * 60
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or _DURATION_PART.sub("", text).strip():
            raise FlorenceWatchError(f"{text!r} is not a duration: write it as 2h, 30m, 1h30m or 45s")
        seconds = sum(float(n) * units[u] for n, u in parts)
    if seconds <= 0:
        raise FlorenceWatchError(f"{text!r}: a pause must last longer than that")
    if seconds > MAX_PAUSE_S:
        raise FlorenceWatchError(f"{text!r}: at most {MAX_PAUSE_S // 86400} days; without --for it lasts until resume")
    return seconds


def pause(for_s: float | None = None, path: Path | None = None) -> Paused:
    """Pause by hand, for *for_s* seconds or until ``resume``."""
    path = path or state_file()
    until = time.time() + for_s if for_s is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"since": time.time(), "until": until}), encoding="utf-8")
    tmp.replace(path)  # whole or not at all: the daemon may read it at any moment
    return Paused("by hand", until)


def resume(path: Path | None = None) -> bool:
    """End a pause by hand; False if there was none."""
    try:
        (path or state_file()).unlink()
        return True
    except FileNotFoundError:
        return False


def by_hand(path: Path | None = None, now: float | None = None) -> Paused | None:
    """The pause by hand in force, if any (one that has run out is none)."""
    path = path or state_file()
    now = time.time() if now is None else now
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        until = state.get("until")
        until = float(until) if until is not None else None
        if until is not None and not (math.isfinite(until) and until <= now + MAX_PAUSE_S):
            raise ValueError(f"'until' is {until}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        # A pause the person asked for is kept even when its file is damaged: they can resume.
        _warn_once(path, f"{path}: unreadable ({exc}): treating it as a pause until `florence-watch resume`")
        return Paused("by hand")
    # One that ran out is left in place: removing it here could remove a pause written meanwhile.
    return None if until is not None and until <= now else Paused("by hand", until)


_warned: set[str] = set()


def _warn_once(path: Path, message: str) -> None:
    """Once per damaged file, not on every look at it."""
    try:
        key = f"{path}:{path.stat().st_mtime_ns}"
    except OSError:
        key = str(path)
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def on_battery(root: Path = POWER_SUPPLY) -> bool:
    """A battery is discharging and no mains adapter is online (the kernel's power_supply class)."""
    discharging = mains = False
    for supply in root.glob("*"):
        kind = _read(supply / "type")
        if _read(supply / "scope") == "Device":  # a wireless mouse's or headset's battery, not the computer's
            continue
        if kind == "Battery" and _read(supply / "status") == "Discharging":
            discharging = True
        elif kind in ("Mains", "USB", "USB_C", "USB_PD") and _read(supply / "online") == "1":
            mains = True
    return discharging and not mains


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def gpu_share_of_others(nvidia_smi: str = "nvidia-smi", ours: Collection[int] | None = None) -> float | None:
    """The largest share (0-1) of a GPU's memory that processes other than *ours* (default: this one)
    hold, over the GPUs; None without nvidia-smi."""
    ours = {os.getpid()} if ours is None else set(ours)
    try:
        gpus = _smi(nvidia_smi, "--query-gpu=uuid,memory.used,memory.total")
        apps = _smi(nvidia_smi, "--query-compute-apps=gpu_uuid,pid,used_memory")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    shares = []
    for uuid, used, total in gpus:
        mine = sum(float(mib) for gpu, pid, mib in apps if gpu == uuid and int(pid) in ours)
        # memory.used counts graphics clients (a game) that --query-compute-apps does not list.
        if float(total) > 0:
            shares.append(max(0.0, float(used) - mine) / float(total))
    return max(shares) if shares else None


def _smi(nvidia_smi: str, query: str) -> list[list[str]]:
    out = subprocess.run(
        [nvidia_smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


class Pauser:
    """What the daemon asks each turn: paused, and why? (By hand first, then the configured rules.)"""

    def __init__(
        self,
        config: PauseConfig,
        state: Path | None = None,
        power_supply: Path | None = None,
        gpu_share: Callable[[], float | None] | None = None,
    ) -> None:
        self.config, self.state = config, state
        self.power_supply = power_supply or POWER_SUPPLY
        self.gpu_share = gpu_share or gpu_share_of_others
        self._lock = threading.Lock()  # asked from the main loop, the tagger and the embedding threads
        self._now: Paused | None = None
        self._rule: Paused | None = None
        self._checked_at = self._rules_at = -RULES_S

    def check(self) -> Paused | None:
        with self._lock:
            if time.monotonic() - self._checked_at >= CHECK_S:
                self._checked_at = time.monotonic()
                if time.monotonic() - self._rules_at >= RULES_S:
                    self._rules_at = time.monotonic()
                    self._rule = self._rules()
                self._now = by_hand(self.state) or self._rule
            return self._now

    def _rules(self) -> Paused | None:
        if self.config.on_battery and on_battery(self.power_supply):
            return Paused("on battery")
        if self.config.gpu_share:
            share = self.gpu_share()
            busy = self._rule is not None and self._rule.reason.startswith("other programs")
            threshold = self.config.gpu_share * (GPU_HYSTERESIS if busy else 1.0)
            if share is not None and share > threshold:
                return Paused(f"other programs hold {share:.0%} of the GPU's memory")
        return None
