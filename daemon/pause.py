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
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import PauseConfig
from .errors import FlorenceWatchError

log = logging.getLogger(__name__)

POWER_SUPPLY = Path("/sys/class/power_supply")
RULES_S = 10.0  # nvidia-smi takes ~0.1 s: the rules are not looked at on every turn of the loop


def state_file() -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "florence-watch" / "pause.json"


@dataclass(frozen=True)
class Paused:
    """Why the daemon is paused, and until when (None: until ``resume``, or while the rule holds)."""

    reason: str
    until: float | None = None

    def describe(self, now: float | None = None) -> str:
        """ "paused until 18:00", "paused until resumed", "paused: on battery"."""
        if self.reason != "by hand":
            return f"paused: {self.reason}"
        if self.until is None:
            return "paused until `florence-watch resume`"
        now = time.time() if now is None else now
        fmt = "%H:%M" if time.localtime(self.until)[:3] == time.localtime(now)[:3] else "%Y-%m-%d %H:%M"
        return "paused until " + time.strftime(fmt, time.localtime(self.until))


def parse_duration(text: str) -> float:
    """ "2h", "90m", "1h30m", "45s", "1d" -> seconds; a bare number is minutes."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([dhms])", "", text).strip():
        raise FlorenceWatchError(f"{text!r} is not a duration: write it as 2h, 30m, 1h30m or 45s")
    seconds = sum(float(n) * units[u] for n, u in parts)
    if seconds <= 0:
        raise FlorenceWatchError(f"{text!r}: a pause must last longer than that")
    return seconds


def pause(for_s: float | None = None, path: Path | None = None) -> Paused:
    """Pause by hand, for *for_s* seconds or until ``resume``."""
    path = path or state_file()
    until = time.time() + for_s if for_s else None
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
    """The pause by hand in force, if any (one that has run out is removed)."""
    path = path or state_file()
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        until = state.get("until")
        until = float(until) if until is not None else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        # A pause the person asked for is kept even when its file is damaged: they can resume.
        log.warning("%s: unreadable (%s): treating it as a pause until resumed", path, exc)
        return Paused("by hand")
    if until is not None and until <= (time.time() if now is None else now):
        resume(path)
        return None
    return Paused("by hand", until)


def on_battery(root: Path = POWER_SUPPLY) -> bool:
    """A battery is discharging and no mains adapter is online (the kernel's power_supply class)."""
    discharging = mains = False
    for supply in root.glob("*"):
        kind = _read(supply / "type")
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


def gpu_share_of_others(nvidia_smi: str = "nvidia-smi", own_pid: int | None = None) -> float | None:
    """Share (0-1) of the first GPU's memory held by processes other than this one; None without nvidia-smi."""
    own_pid = os.getpid() if own_pid is None else own_pid
    try:
        gpu = _smi(nvidia_smi, "--query-gpu=memory.used,memory.total")
        apps = _smi(nvidia_smi, "--query-compute-apps=pid,used_memory")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not gpu or gpu[0][1] <= 0:
        return None
    used, total = gpu[0]
    ours = sum(mib for pid, mib in apps if int(pid) == own_pid)
    # memory.used counts graphics clients (a game) that --query-compute-apps does not list.
    return max(0.0, used - ours) / total


def _smi(nvidia_smi: str, query: str) -> list[tuple[float, float]]:
    out = subprocess.run(
        [nvidia_smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return [(float(a), float(b)) for a, b in rows]


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
        self._rule: Paused | None = None
        self._rules_at = -RULES_S

    def check(self) -> Paused | None:
        hand = by_hand(self.state)
        if hand is not None:
            return hand
        if time.monotonic() - self._rules_at >= RULES_S:
            self._rules_at = time.monotonic()
            self._rule = self._rules()
        return self._rule

    def _rules(self) -> Paused | None:
        if self.config.on_battery and on_battery(self.power_supply):
            return Paused("on battery")
        if self.config.gpu_share:
            share = self.gpu_share()
            if share is not None and share > self.config.gpu_share:
                return Paused(f"other programs hold {share:.0%} of the GPU's memory")
        return None
