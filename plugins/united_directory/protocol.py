"""The directory's WebSocket protocol: frame bounds, signed byte strings, frame handlers.

Both ends (the ``directory`` server and the ``discovery`` client) use these
helpers, so the byte strings that get signed and the bounds every frame is
decoded within are defined once. The schema is ``proto/frames.proto``, whose
generated code stays in ``united_core.wire.frames_pb2`` (the wire format of
record); this module is what the protocol *means*, and it belongs to the
directory, not to the core.

A plugin serving frames of its own (``united_register_frame_handlers``) needs
none of this at run time: it gets a :class:`FrameContext` and returns a
``ServerFrame`` (see :class:`FrameHandler` for the contract).
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from google.protobuf.message import DecodeError

from united_core.identity import verify_signature
from united_core.wire import frames_pb2

if TYPE_CHECKING:
    from united_core.api import NodeAPI

    from .model import Member, MemberSet

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 * 1024
NONCE_BYTES = 32
MAX_DISPLAY_NAME = 64
MAX_CHANNEL_NAME = 64
MAX_ADDRS = 16
MAX_ADDR_LEN = 256

AUTH_DOMAIN = b"united/auth/v1\x00"
REGISTER_DOMAIN = b"united/register/v1\x00"
ROTATE_DOMAIN = b"united/rotate-key/v1\x00"

ClientFrame = frames_pb2.ClientFrame
ServerFrame = frames_pb2.ServerFrame
ErrorCode = frames_pb2.ErrorCode


class FrameError(ValueError):
    """A frame that cannot be accepted; ``code`` is the ErrorCode to answer with.

    Raised by this module's decoding and cleaning helpers, for the directory's
    own use; a plugin's frame handler returns an error reply instead
    (:class:`FrameHandler`).
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def auth_bytes(server_id: str, nonce: bytes, public_key: bytes) -> bytes:
    """What a member signs to log in: bound to this server, this nonce and this key."""
    return AUTH_DOMAIN + _lp(server_id.encode()) + _lp(nonce) + public_key


def register_bytes(server_id: str, nonce: bytes, public_key: bytes, display_name: str) -> bytes:
    return (
        REGISTER_DOMAIN
        + _lp(server_id.encode())
        + _lp(nonce)
        + public_key
        + _lp(display_name.encode())
    )


def rotation_bytes(server_id: str, member_id: str, old_key: bytes, new_key: bytes) -> bytes:
    """Signed by the old key *and* the new key: the member authorises the change and
    proves it holds the new key."""
    return ROTATE_DOMAIN + _lp(server_id.encode()) + _lp(member_id.encode()) + old_key + new_key


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    return verify_signature(public_key, data, signature)


def decode_client_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> frames_pb2.ClientFrame:
    frame = frames_pb2.ClientFrame()
    _decode(frame, data, max_bytes)
    return frame


def decode_server_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> frames_pb2.ServerFrame:
    frame = frames_pb2.ServerFrame()
    _decode(frame, data, max_bytes)
    return frame


def _decode(
    frame: frames_pb2.ClientFrame | frames_pb2.ServerFrame, data: bytes, max_bytes: int
) -> None:
    if len(data) > max_bytes:
        raise FrameError(
            frames_pb2.ERROR_CODE_TOO_LARGE, f"frame is {len(data)} bytes, over {max_bytes}"
        )
    try:
        frame.ParseFromString(data)
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
        raise FrameError(frames_pb2.ERROR_CODE_MALFORMED, f"cannot decode frame: {exc}") from None
    if frame.WhichOneof("body") is None:
        raise FrameError(frames_pb2.ERROR_CODE_MALFORMED, "frame has no body")


def error_frame(request_id: int, code: int, message: str) -> frames_pb2.ServerFrame:
    return frames_pb2.ServerFrame(
        request_id=request_id,
        error=frames_pb2.Error(code=code, message=message),  # type: ignore[arg-type]
    )


# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt): characters
# that render as nothing, so ``alice`` and ``alice`` + U+034F would look alike.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Not default-ignorable, yet drawn as a blank: fillers and empty patterns.
_BLANK_FILLERS = frozenset(
    {
        0x2800,  # BRAILLE PATTERN BLANK
        0x1D159,  # MUSICAL SYMBOL NULL NOTEHEAD
        0x16FE4,  # KHITAN SMALL SCRIPT FILLER
    }
)

# Scripts that may share one name (UTS #39 "highly restrictive"): Japanese, Chinese
# with Bopomofo and Korean are written mixing them, and with Latin letters.
_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# The first word of a letter's Unicode name is its script, but for these.
_SCRIPT_ALIASES = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "TURNED": "LATIN"}
_NO_SCRIPT = ("MODIFIER ", "KATAKANA-HIRAGANA ")  # shared by scripts (Common)


def is_invisible(char: str) -> bool:
    """A character that draws nothing: Default_Ignorable_Code_Point, or a blank filler."""
    cp = ord(char)
    return cp in _BLANK_FILLERS or any(lo <= cp <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"


def letter_script(char: str) -> str | None:
    """The script of a letter (or of a non-ASCII digit), judged by the first word of
    its Unicode name (``LATIN``, ``CYRILLIC``, ``GREEK``, ``HAN``...); None for what
    belongs to no one script (ASCII digits, punctuation, spaces, combining marks,
    modifier letters). Python has no Script property: this is the approximation."""
    category = unicodedata.category(char)
    if not (category.startswith("L") or (category == "Nd" and not char.isascii())):
        return None
    name = unicodedata.name(char, "")
    if not name or name.startswith(_NO_SCRIPT):
        return None
    words = name.replace("-", " ").split()
    if words[0] in ("FULLWIDTH", "HALFWIDTH", "EXTENDED") and len(words) > 1:
        words = words[1:]
    return _SCRIPT_ALIASES.get(words[0], words[0])


def clean_display_name(name: str) -> str:
    """``name`` with its whitespace collapsed, or a FrameError saying why it cannot be
    a display name: empty or too long, unprintable, an invisible character (which
    would make two names look alike), or letters of several scripts (``alice`` with
    its ``a`` the Cyrillic U+0430). A name wholly in another script that looks Latin
    (``ace`` spelt in Cyrillic letters) is not caught: that needs Unicode's
    confusables table (UTS #39 skeletons)."""
    name = " ".join(name.split())
    if not 1 <= len(name) <= MAX_DISPLAY_NAME or not name.isprintable():
        raise FrameError(
            frames_pb2.ERROR_CODE_MALFORMED,
            f"a display name is 1 to {MAX_DISPLAY_NAME} printable characters",
        )
    normal = unicodedata.normalize("NFKC", name)
    invisible = next((c for c in name + normal if is_invisible(c)), None)
    if invisible is not None:
        raise FrameError(
            frames_pb2.ERROR_CODE_MALFORMED,
            f"a display name may not contain invisible characters ({_describe(invisible)})",
        )
    first: dict[str, str] = {}  # script -> its first letter in the name
    for char in normal:
        script = letter_script(char)
        if script is not None:
            first.setdefault(script, char)
    scripts = frozenset(first)
    if len(scripts) > 1 and not any(scripts <= mix for mix in _SCRIPT_MIXES):
        found = ", ".join(
            f"{s.title()} ({_describe(c)})" for s, c in sorted(first.items(), key=lambda i: i[0])
        )
        raise FrameError(
            frames_pb2.ERROR_CODE_MALFORMED,
            f"a display name is written in one script; this one mixes {found}",
        )
    return name


def name_key(name: str) -> str:
    """What makes two display names the same within a community: NFKC, then case
    folding, then NFKC again, without default-ignorable characters (Unicode's
    "NFKC_Casefold" in spirit), so ``Alice``, ``ALICE`` and ``Alice`` written in
    full-width letters are one name. Applied to a name :func:`clean_display_name`
    already cleaned (whitespace collapsed); dropping the invisible characters it
    refuses keeps names registered before it refused them from shadowing others."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "".join(c for c in folded if not is_invisible(c))


def clean_addrs(addrs: list[str]) -> list[str]:
    if len(addrs) > MAX_ADDRS or any(len(a) > MAX_ADDR_LEN or not a.startswith("/") for a in addrs):
        raise FrameError(
            frames_pb2.ERROR_CODE_MALFORMED,
            f"at most {MAX_ADDRS} multiaddrs of at most {MAX_ADDR_LEN} characters",
        )
    return list(addrs)


REACHABILITIES = ("public", "private", "unknown")
NAT_KINDS = ("none", "endpoint-independent", "symmetric", "unknown")


def clean_reachability(reachability: str, nat: str) -> tuple[str, str]:
    """A member's announced (reachability, nat); anything else (an older client's
    empty fields, garbage) is ``unknown``: it is what the member says, for display."""
    return (
        reachability if reachability in REACHABILITIES else "unknown",
        nat if nat in NAT_KINDS else "unknown",
    )


def topic_for(server_id: str, channel_id: str) -> str:
    return f"united/{server_id}/{channel_id}"


@dataclass(frozen=True)
class FrameContext:
    """What a plugin's frame handler learns about the session and the directory."""

    member: Member  # the logged-in member who sent the frame
    server_id: str
    members: MemberSet  # the current member list (plus trusted peers: the server)
    topic_of: Callable[[str], str | None]  # channel id -> topic, None if unknown
    channel_of: Callable[[str], str | None]  # topic -> channel id, None if unknown
    # The largest frame a client decodes: a reply must fit (the archive pages by it).
    max_frame_bytes: int = MAX_FRAME_BYTES


FrameHandlerFn = Callable[
    ["NodeAPI", FrameContext, frames_pb2.ClientFrame], Awaitable[frames_pb2.ServerFrame]
]


class FrameHandler(NamedTuple):
    """Serves one kind of client frame (the ``oneof`` name, e.g. ``"history"``) for
    logged-in members: ``await handler(node, ctx, frame)`` returns the reply.

    The contract (the same for every handler, whoever wrote it):

    - the reply is a ``ServerFrame``; the directory sets its ``request_id``;
    - a refusal is a reply too: a ``ServerFrame`` whose ``error`` is set
      (:func:`error_reply`, or ``ServerFrame(error=Error(code=..., message=...))``
      built from ``united_core.wire.frames_pb2`` alone);
    - an exception escaping the handler is a bug: the directory logs it with the
      frame kind and answers ``ERROR_CODE_UNEXPECTED`` without the details; the
      session stays open.

    A plain ``(kind, handler)`` tuple is accepted in its place, so a plugin can
    serve frames without importing the directory at run time.
    """

    kind: str
    handler: FrameHandlerFn


def error_reply(code: int, message: str) -> frames_pb2.ServerFrame:
    """A frame handler's refusal: an error frame (the directory fills in the request id)."""
    return error_frame(0, code, message)
