"""Who may send what into a room's channel (sans-I/O), by the room's chat mode.

Chat modes (a room setting, published to the edges with the room's policy):
``open``      every viewer chats and likes, anonymous ones too
``audience``  viewers with an audience token chat and like; anonymous viewers only read (default)
``anchors``   only anchors (and operators) chat; the audience likes and reads
``off``       no chat and no likes; commands only
Commands are for anchors and operators, in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relay.messages.envelope import SenderRole

ChatMode = Literal["open", "audience", "anchors", "off"]
CHAT_MODES: tuple[ChatMode, ...] = ("open", "audience", "anchors", "off")
DEFAULT_CHAT_MODE: ChatMode = "audience"


@dataclass(frozen=True, slots=True)
class Permissions:
    chat: bool
    like: bool
    command: bool


def permissions(mode: str, role: SenderRole, anonymous: bool) -> Permissions:
    command = role in ("anchor", "operator")
    if role in ("anchor", "operator"):
        return Permissions(chat=mode != "off", like=mode != "off", command=command)
    if mode == "open":
        return Permissions(True, True, False)
    if mode == "audience":
        return Permissions(not anonymous, not anonymous, False)
    if mode == "anchors":
        return Permissions(False, not anonymous, False)
    return Permissions(False, False, False)
