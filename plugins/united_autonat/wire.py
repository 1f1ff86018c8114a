"""The AutoNAT protocol's messages: length-prefixed JSON, bounded, checked field by field.

Plain data and bytes only (no trio, no libp2p): the server's and the client's
trio-side services frame and parse with these functions, and tests feed them
hostile input directly. docs/autonat.md describes the exchange.

A frame is a 2-byte big-endian length (1..:data:`MAX_FRAME`) followed by that
many bytes of UTF-8 JSON, an object with a ``"type"``. Anything else (a bad
length, bytes that are not JSON, a missing or mistyped field, an oversized list)
raises :class:`BadMessage`, which the server answers with an ``error`` frame.

NAT observations (STUN-like, plain TCP next to libp2p): a ``result`` may carry
``observe``, the server's two reflector ports and a one-time token. The member
connects to each from its listen port, sends the token as one ASCII line and
reads back one line, ``"<ip> <port>\n"``: the address the server saw.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Protocol

import multiaddr

PROTOCOL = "/united/autonat/1.0.0"  # member -> server, over the member's connection
DIAL_BACK_PROTOCOL = "/united/autonat/dial-back/1.0.0"  # server's dialer -> member, fresh

MAX_FRAME = 4096  # bytes of JSON in one frame
LENGTH_BYTES = 2
NONCE_BYTES = 8  # a random 64-bit nonce per probe
MAX_REQUEST_ADDRS = 16  # addresses in a request; more is a bad request
MAX_ADDR_CHARS = 256
DIAL_BACK_BYTES = NONCE_BYTES + 1  # the nonce, then the index of the address dialed
OBSERVE_TOKEN_CHARS = 32  # 128 random bits, lowercase hex
MAX_OBSERVE_LINE = 64  # bytes in one line of an observation, its newline included

# Per-address outcomes (the server's answer).
OK = "OK"  # dialed on a fresh connection, the nonce delivered and acknowledged
DIAL_ERROR = "DIAL_ERROR"  # dialed: no connection, no handshake, or no acknowledgement
REFUSED = "REFUSED"  # not dialed (see the codes below)
STATUSES = (OK, DIAL_ERROR, REFUSED)

# Why an address was not dialed.
OTHER_IP = "other-ip"  # not the IP the request came from (amplification guard)
UNSUPPORTED = "unsupported"  # not /ip4|ip6/.../tcp/PORT (DNS, a relayed address, QUIC...)
INVALID = "invalid"  # not a multiaddr, port 0, a wildcard
OTHER_PEER = "other-peer"  # ends in /p2p/<someone else>
TOO_MANY = "too-many"  # past the server's max_addrs
DUPLICATE = "duplicate"

# Why a whole request was refused.
NOT_A_MEMBER = "not-a-member"
RELAYED = "relayed"  # a request over a relayed connection: its observed IP is the relay's
RATE_LIMITED = "rate-limited"
BUSY = "busy"


class BadMessage(ValueError):
    """Malformed input: the peer gets an ``error`` frame, never a crash."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length, then the JSON."""
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    if not 0 < len(data) <= MAX_FRAME:
        raise BadMessage(f"a frame of {len(data)} bytes (at most {MAX_FRAME})")
    return len(data).to_bytes(LENGTH_BYTES, "big") + data


def frame_length(header: bytes) -> int:
    if len(header) != LENGTH_BYTES:
        raise BadMessage("the stream ended inside a frame's length")
    length = int.from_bytes(header, "big")
    if not 0 < length <= MAX_FRAME:
        raise BadMessage(f"a frame of {length} bytes (1..{MAX_FRAME})")
    return length


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage("not a JSON object with a string 'type'")
    return message


def _string(message: dict[str, Any], key: str, limit: int = MAX_ADDR_CHARS) -> str:
    value = message.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise BadMessage(f"{key!r}: a string of at most {limit} characters expected")
    return value


# ---- the request ---------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    nonce: bytes
    addrs: tuple[str, ...]

    def to_message(self) -> dict[str, Any]:
        return {"type": "request", "nonce": self.nonce.hex(), "addrs": list(self.addrs)}


def parse_request(message: dict[str, Any]) -> Request:
    if message.get("type") != "request":
        raise BadMessage(f"a 'request' expected, not {message.get('type')!r}")
    nonce_hex = _string(message, "nonce", 2 * NONCE_BYTES)
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        raise BadMessage("'nonce': hex expected") from None
    if len(nonce) != NONCE_BYTES:
        raise BadMessage(f"'nonce': {NONCE_BYTES} bytes expected")
    addrs = message.get("addrs")
    if not isinstance(addrs, list) or len(addrs) > MAX_REQUEST_ADDRS:
        raise BadMessage(f"'addrs': a list of at most {MAX_REQUEST_ADDRS} expected")
    for addr in addrs:
        if not isinstance(addr, str) or len(addr) > MAX_ADDR_CHARS:
            raise BadMessage(f"'addrs': strings of at most {MAX_ADDR_CHARS} characters expected")
    return Request(nonce, tuple(addrs))


# ---- the server's replies ------------------------------------------------------------


@dataclass(frozen=True)
class AddrResult:
    addr: str
    status: str  # OK | DIAL_ERROR | REFUSED
    code: str = ""  # REFUSED: why (OTHER_IP...)
    reason: str = ""  # human-readable detail
    ms: int = 0  # how long the dial-back took

    def to_message(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "status": self.status,
            "code": self.code,
            "reason": self.reason[:200],
            "ms": self.ms,
        }


def dialing(dialer: str, observed: str) -> dict[str, Any]:
    """Sent before any dial: admit ``dialer`` (the dial-back's PeerId), answer ``ready``."""
    return {"type": "dialing", "dialer": dialer, "observed": observed}


def result(
    observed: str, results: list[AddrResult], observe: Observe | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "result",
        "observed": observed,
        "results": [r.to_message() for r in results],
    }
    if observe is not None:  # an older client ignores it
        message["observe"] = observe.to_message()
    return message


def refused(code: str, reason: str, retry_after: float = 0.0) -> dict[str, Any]:
    return {"type": "refused", "code": code, "reason": reason, "retry_after": retry_after}


def error(reason: str) -> dict[str, Any]:
    return {"type": "error", "reason": reason[:200]}


def parse_results(message: dict[str, Any], sent: tuple[str, ...]) -> list[AddrResult]:
    """A ``result``'s per-address outcomes, one per address sent, in order (a client
    never trusts a server's list beyond what it asked about)."""
    rows = message.get("results")
    if not isinstance(rows, list) or len(rows) != len(sent):
        raise BadMessage(f"'results': one per address sent ({len(sent)}) expected")
    out = []
    for row, addr in zip(rows, sent, strict=True):
        if not isinstance(row, dict) or row.get("addr") != addr:
            raise BadMessage("'results': in the order of the addresses sent")
        status = row.get("status")
        if status not in STATUSES:
            raise BadMessage(f"'status': one of {STATUSES}")
        ms = row.get("ms", 0)
        out.append(
            AddrResult(
                addr,
                str(status),
                _string(row, "code", 40) if "code" in row else "",
                _string(row, "reason", 200) if "reason" in row else "",
                int(ms) if isinstance(ms, int | float) and 0 <= ms < 1e9 else 0,
            )
        )
    return out


# ---- NAT observations ----------------------------------------------------------------


@dataclass(frozen=True)
class Observe:
    """A ``result``'s ``observe``: the server's two reflector ports (on the IP this
    member reaches it at) and a token for two observations within about 30 s."""

    ports: tuple[int, int]
    token: str

    def to_message(self) -> dict[str, Any]:
        return {"ports": list(self.ports), "token": self.token}


def is_token(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == OBSERVE_TOKEN_CHARS
        and all(c in "0123456789abcdef" for c in value)
    )


def _port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def parse_observe(message: dict[str, Any]) -> Observe | None:
    """A ``result``'s ``observe``: None when absent (an older server, or one that does
    not observe), :class:`BadMessage` when malformed (the caller keeps the verdict)."""
    if "observe" not in message:
        return None
    value = message["observe"]
    if not isinstance(value, dict):
        raise BadMessage("'observe': an object expected")
    ports = value.get("ports")
    if (
        not isinstance(ports, list)
        or len(ports) != 2
        or not all(_port(p) for p in ports)
        or ports[0] == ports[1]
    ):
        raise BadMessage("'observe': 'ports': two different TCP ports expected")
    token = value.get("token")
    if not is_token(token):
        raise BadMessage(f"'observe': 'token': {OBSERVE_TOKEN_CHARS} lowercase hex expected")
    assert isinstance(token, str)
    return Observe((ports[0], ports[1]), token)


def complete_line(data: bytes) -> bytes | None:
    """The first line of ``data``, its newline included, once it is complete; None
    while more may come. :class:`BadMessage` past :data:`MAX_OBSERVE_LINE` bytes."""
    end = data.find(b"\n", 0, MAX_OBSERVE_LINE)
    if end >= 0:
        return data[: end + 1]
    if len(data) >= MAX_OBSERVE_LINE:
        raise BadMessage(f"a line of more than {MAX_OBSERVE_LINE} bytes")
    return None


def observe_request(token: str) -> bytes:
    """What a member sends on an observation connection: the token, one line."""
    return token.encode("ascii") + b"\n"


def parse_observe_request(line: bytes) -> str:
    """The token a member sent (:func:`observe_request`), or :class:`BadMessage`."""
    text = line.removesuffix(b"\n").removesuffix(b"\r")
    token = text.decode("ascii", errors="replace")
    if not is_token(token):
        raise BadMessage("not a token")
    return token


def observed_line(ip: str, port: int) -> bytes:
    """The server's answer: the address the observation connection came from."""
    return f"{plain_ip(ip)} {port}\n".encode("ascii")


def parse_observed_line(data: bytes) -> tuple[str, int]:
    """``(ip, port)`` from the server's answer (everything it sent before closing)."""
    if len(data) > MAX_OBSERVE_LINE or not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise BadMessage("one line '<ip> <port>' expected")
    try:
        ip, port = data[:-1].decode("ascii").split(" ")
        address = plain_ip(ip)
    except ValueError:  # UnicodeDecodeError too
        raise BadMessage("one line '<ip> <port>' expected") from None
    if not port.isdigit() or port != str(int(port)) or not _port(int(port)):
        raise BadMessage(f"not a TCP port: {port!r}")
    return address, int(port)


def plain_ip(ip: str) -> str:
    """``ip`` normalised; an IPv4-mapped IPv6 address (a dual-stack socket) as IPv4.
    ValueError when it is no IP address."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# ---- addresses -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dialable:
    """An address the server may dial: the IP and TCP port of a claimed address."""

    addr: str  # as claimed
    ip: str
    port: int

    @property
    def multiaddr(self) -> str:
        family = "ip6" if ":" in self.ip else "ip4"
        return f"/{family}/{self.ip}/tcp/{self.port}"


def tcp_endpoint(addr: str) -> tuple[str, int] | None:
    """``(ip, port)`` of a bare ``/ip4|ip6/IP/tcp/PORT`` (a listen address), else None
    (DNS, QUIC, anything relayed or longer)."""
    try:
        parts = [(proto.name, value) for proto, value in multiaddr.Multiaddr(addr).items()]
        if len(parts) != 2 or parts[0][0] not in ("ip4", "ip6") or parts[1][0] != "tcp":
            return None
        return str(ipaddress.ip_address(str(parts[0][1]))), int(parts[1][1])
    except Exception:
        return None


def observed_multiaddr(ip: str, port: int) -> str:
    family = "ip6" if ":" in ip else "ip4"
    return f"/{family}/{ip}/tcp/{port}"


def classify(addr: str, observed_ip: str, requester: str) -> Dialable | tuple[str, str]:
    """``addr`` as the server may dial it, or ``(code, reason)`` why it may not.

    Only ``/ip4|ip6/<IP>/tcp/<PORT>`` (optionally ``/p2p/<requester>``) whose IP is
    the one the request came from: the server never dials a third party for a member
    (go's AutoNAT v2 asks for 30-100 kB of data first; we simply refuse).
    """
    if "/p2p-circuit" in addr:
        return UNSUPPORTED, "a relayed address"
    try:
        parts = [(proto.name, value) for proto, value in multiaddr.Multiaddr(addr).items()]
    except Exception as exc:
        return INVALID, f"not a multiaddr: {type(exc).__name__}"
    if parts and parts[-1][0] == "p2p":
        if parts[-1][1] != requester:
            return OTHER_PEER, "names another peer"
        parts = parts[:-1]
    if len(parts) != 2 or parts[0][0] not in ("ip4", "ip6") or parts[1][0] != "tcp":
        return UNSUPPORTED, "not /ip4|ip6/.../tcp/PORT"
    try:
        ip = ipaddress.ip_address(str(parts[0][1]))
        port = int(parts[1][1])
        seen = ipaddress.ip_address(observed_ip)
    except ValueError as exc:
        return INVALID, str(exc)
    if ip.is_unspecified or not 0 < port < 65536:
        return INVALID, "a wildcard address or port 0"
    if ip != seen:
        return OTHER_IP, f"not the address the request came from ({observed_ip})"
    return Dialable(addr, str(ip), port)


# ---- frames on a stream (any object with async read(n) / write(data)) -----------------


class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


async def read_exactly(stream: Stream, n: int) -> bytes:
    """``n`` bytes, or :class:`BadMessage` if the stream ends first."""
    data = b""
    while len(data) < n:
        chunk = await stream.read(n - len(data))
        if not chunk:
            raise BadMessage(f"the stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def read_frame(stream: Stream) -> dict[str, Any]:
    length = frame_length(await read_exactly(stream, LENGTH_BYTES))
    return decode(await read_exactly(stream, length))


async def write_frame(stream: Stream, message: dict[str, Any]) -> None:
    await stream.write(encode(message))
