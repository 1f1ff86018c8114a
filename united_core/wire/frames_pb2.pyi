from . import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefusalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_REASON_UNSPECIFIED: _ClassVar[RefusalReason]
    REFUSAL_REASON_MALFORMED: _ClassVar[RefusalReason]
    REFUSAL_REASON_TOO_LARGE: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_SIGNATURE: _ClassVar[RefusalReason]
    REFUSAL_REASON_WRONG_TOPIC: _ClassVar[RefusalReason]
    REFUSAL_REASON_UNKNOWN_CHANNEL: _ClassVar[RefusalReason]
    REFUSAL_REASON_OUT_OF_BOUNDS: _ClassVar[RefusalReason]
    REFUSAL_REASON_FROM_THE_FUTURE: _ClassVar[RefusalReason]
    REFUSAL_REASON_STALE: _ClassVar[RefusalReason]
    REFUSAL_REASON_NOT_A_MEMBER: _ClassVar[RefusalReason]
    REFUSAL_REASON_POLICY: _ClassVar[RefusalReason]
    REFUSAL_REASON_RATE_LIMITED: _ClassVar[RefusalReason]
    REFUSAL_REASON_INTERNAL: _ClassVar[RefusalReason]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_MALFORMED: _ClassVar[ErrorCode]
    ERROR_CODE_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_UNEXPECTED: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_SIGNATURE: _ClassVar[ErrorCode]
    ERROR_CODE_NONCE_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_INVITE_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_A_MEMBER: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_CHANNEL: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMITED: _ClassVar[ErrorCode]
    ERROR_CODE_UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_NAME_TAKEN: _ClassVar[ErrorCode]
REFUSAL_REASON_UNSPECIFIED: RefusalReason
REFUSAL_REASON_MALFORMED: RefusalReason
REFUSAL_REASON_TOO_LARGE: RefusalReason
REFUSAL_REASON_BAD_SIGNATURE: RefusalReason
REFUSAL_REASON_WRONG_TOPIC: RefusalReason
REFUSAL_REASON_UNKNOWN_CHANNEL: RefusalReason
REFUSAL_REASON_OUT_OF_BOUNDS: RefusalReason
REFUSAL_REASON_FROM_THE_FUTURE: RefusalReason
REFUSAL_REASON_STALE: RefusalReason
REFUSAL_REASON_NOT_A_MEMBER: RefusalReason
REFUSAL_REASON_POLICY: RefusalReason
REFUSAL_REASON_RATE_LIMITED: RefusalReason
REFUSAL_REASON_INTERNAL: RefusalReason
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_MALFORMED: ErrorCode
ERROR_CODE_TOO_LARGE: ErrorCode
ERROR_CODE_UNEXPECTED: ErrorCode
ERROR_CODE_BAD_SIGNATURE: ErrorCode
ERROR_CODE_NONCE_INVALID: ErrorCode
ERROR_CODE_INVITE_INVALID: ErrorCode
ERROR_CODE_NOT_A_MEMBER: ErrorCode
ERROR_CODE_UNKNOWN_CHANNEL: ErrorCode
ERROR_CODE_RATE_LIMITED: ErrorCode
ERROR_CODE_UNSUPPORTED_VERSION: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_NAME_TAKEN: ErrorCode

class Member(_message.Message):
    __slots__ = ("member_id", "display_name", "public_key", "peer_id", "previous_keys")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEYS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    display_name: str
    public_key: bytes
    peer_id: str
    previous_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, member_id: _Optional[str] = ..., display_name: _Optional[str] = ..., public_key: _Optional[bytes] = ..., peer_id: _Optional[str] = ..., previous_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Channel(_message.Message):
    __slots__ = ("channel_id", "name", "topic")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    name: str
    topic: str
    def __init__(self, channel_id: _Optional[str] = ..., name: _Optional[str] = ..., topic: _Optional[str] = ...) -> None: ...

class PeerPresence(_message.Message):
    __slots__ = ("member_id", "peer_id", "addrs", "reachability", "nat")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    reachability: str
    nat: str
    def __init__(self, member_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., reachability: _Optional[str] = ..., nat: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version",)
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    def __init__(self, protocol_version: _Optional[int] = ...) -> None: ...

class AuthResponse(_message.Message):
    __slots__ = ("public_key", "signature", "nonce")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    signature: bytes
    nonce: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("invite_code", "display_name", "public_key", "signature", "nonce")
    INVITE_CODE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    invite_code: str
    display_name: str
    public_key: bytes
    signature: bytes
    nonce: bytes
    def __init__(self, invite_code: _Optional[str] = ..., display_name: _Optional[str] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class RotateKey(_message.Message):
    __slots__ = ("new_public_key", "signature_by_old", "signature_by_new")
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_BY_OLD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_BY_NEW_FIELD_NUMBER: _ClassVar[int]
    new_public_key: bytes
    signature_by_old: bytes
    signature_by_new: bytes
    def __init__(self, new_public_key: _Optional[bytes] = ..., signature_by_old: _Optional[bytes] = ..., signature_by_new: _Optional[bytes] = ...) -> None: ...

class JoinChannel(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class LeaveChannel(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class CreateChannel(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListChannels(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AnnounceAddrs(_message.Message):
    __slots__ = ("addrs", "reachability", "nat")
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    reachability: str
    nat: str
    def __init__(self, addrs: _Optional[_Iterable[str]] = ..., reachability: _Optional[str] = ..., nat: _Optional[str] = ...) -> None: ...

class DirectoryQuery(_message.Message):
    __slots__ = ("channel_id",)
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    def __init__(self, channel_id: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("channel_id", "from_seq", "limit")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    from_seq: int
    limit: int
    def __init__(self, channel_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SubmitMessages(_message.Message):
    __slots__ = ("envelopes", "reconciled")
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Envelope]
    reconciled: bool
    def __init__(self, envelopes: _Optional[_Iterable[_Union[_envelope_pb2.Envelope, _Mapping]]] = ..., reconciled: _Optional[bool] = ...) -> None: ...

class LookupMessages(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, message_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("request_id", "hello", "auth", "register", "rotate_key", "join", "leave", "create_channel", "list_channels", "announce", "directory_query", "history", "submit", "lookup")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    ROTATE_KEY_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    CREATE_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LIST_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_QUERY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: Hello
    auth: AuthResponse
    register: Register
    rotate_key: RotateKey
    join: JoinChannel
    leave: LeaveChannel
    create_channel: CreateChannel
    list_channels: ListChannels
    announce: AnnounceAddrs
    directory_query: DirectoryQuery
    history: HistoryRequest
    submit: SubmitMessages
    lookup: LookupMessages
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., auth: _Optional[_Union[AuthResponse, _Mapping]] = ..., register: _Optional[_Union[Register, _Mapping]] = ..., rotate_key: _Optional[_Union[RotateKey, _Mapping]] = ..., join: _Optional[_Union[JoinChannel, _Mapping]] = ..., leave: _Optional[_Union[LeaveChannel, _Mapping]] = ..., create_channel: _Optional[_Union[CreateChannel, _Mapping]] = ..., list_channels: _Optional[_Union[ListChannels, _Mapping]] = ..., announce: _Optional[_Union[AnnounceAddrs, _Mapping]] = ..., directory_query: _Optional[_Union[DirectoryQuery, _Mapping]] = ..., history: _Optional[_Union[HistoryRequest, _Mapping]] = ..., submit: _Optional[_Union[SubmitMessages, _Mapping]] = ..., lookup: _Optional[_Union[LookupMessages, _Mapping]] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "server_id", "expires_at")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    server_id: str
    expires_at: int
    def __init__(self, nonce: _Optional[bytes] = ..., server_id: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("server_id", "you", "members", "joined", "server_addrs", "server_peer_id")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    YOU_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    SERVER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    SERVER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    you: Member
    members: _containers.RepeatedCompositeFieldContainer[Member]
    joined: _containers.RepeatedCompositeFieldContainer[Channel]
    server_addrs: _containers.RepeatedScalarFieldContainer[str]
    server_peer_id: str
    def __init__(self, server_id: _Optional[str] = ..., you: _Optional[_Union[Member, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., joined: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ..., server_addrs: _Optional[_Iterable[str]] = ..., server_peer_id: _Optional[str] = ...) -> None: ...

class MemberList(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class ChannelList(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[Channel]
    def __init__(self, channels: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ...) -> None: ...

class Presence(_message.Message):
    __slots__ = ("channel_id", "online")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    online: _containers.RepeatedCompositeFieldContainer[PeerPresence]
    def __init__(self, channel_id: _Optional[str] = ..., online: _Optional[_Iterable[_Union[PeerPresence, _Mapping]]] = ...) -> None: ...

class DirectoryAnswer(_message.Message):
    __slots__ = ("channel_id", "online")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    online: _containers.RepeatedCompositeFieldContainer[PeerPresence]
    def __init__(self, channel_id: _Optional[str] = ..., online: _Optional[_Iterable[_Union[PeerPresence, _Mapping]]] = ...) -> None: ...

class StoredMessage(_message.Message):
    __slots__ = ("seq", "envelope")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    envelope: _envelope_pb2.Envelope
    def __init__(self, seq: _Optional[int] = ..., envelope: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ...) -> None: ...

class HistoryPage(_message.Message):
    __slots__ = ("channel_id", "messages", "next_seq", "last_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    messages: _containers.RepeatedCompositeFieldContainer[StoredMessage]
    next_seq: int
    last_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[StoredMessage, _Mapping]]] = ..., next_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class SequenceAssigned(_message.Message):
    __slots__ = ("message_id", "channel_id", "seq")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    channel_id: str
    seq: int
    def __init__(self, message_id: _Optional[bytes] = ..., channel_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class EnvelopeRefused(_message.Message):
    __slots__ = ("message_id", "reason", "permanent", "detail")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    reason: RefusalReason
    permanent: bool
    detail: str
    def __init__(self, message_id: _Optional[bytes] = ..., reason: _Optional[_Union[RefusalReason, str]] = ..., permanent: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class SubmitResult(_message.Message):
    __slots__ = ("assigned", "refused")
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    assigned: _containers.RepeatedCompositeFieldContainer[SequenceAssigned]
    refused: _containers.RepeatedCompositeFieldContainer[EnvelopeRefused]
    def __init__(self, assigned: _Optional[_Iterable[_Union[SequenceAssigned, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[EnvelopeRefused, _Mapping]]] = ...) -> None: ...

class LookupResult(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: _containers.RepeatedCompositeFieldContainer[SequenceAssigned]
    def __init__(self, found: _Optional[_Iterable[_Union[SequenceAssigned, _Mapping]]] = ...) -> None: ...

class ChannelHead(_message.Message):
    __slots__ = ("channel_id", "last_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    last_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Ok(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("request_id", "challenge", "welcome", "member_list", "channel_list", "presence", "directory_answer", "history_page", "submit_result", "ok", "error", "lookup_result", "channel_head")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    MEMBER_LIST_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_LIST_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_ANSWER_FIELD_NUMBER: _ClassVar[int]
    HISTORY_PAGE_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_RESULT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_HEAD_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    challenge: Challenge
    welcome: Welcome
    member_list: MemberList
    channel_list: ChannelList
    presence: Presence
    directory_answer: DirectoryAnswer
    history_page: HistoryPage
    submit_result: SubmitResult
    ok: Ok
    error: Error
    lookup_result: LookupResult
    channel_head: ChannelHead
    def __init__(self, request_id: _Optional[int] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., member_list: _Optional[_Union[MemberList, _Mapping]] = ..., channel_list: _Optional[_Union[ChannelList, _Mapping]] = ..., presence: _Optional[_Union[Presence, _Mapping]] = ..., directory_answer: _Optional[_Union[DirectoryAnswer, _Mapping]] = ..., history_page: _Optional[_Union[HistoryPage, _Mapping]] = ..., submit_result: _Optional[_Union[SubmitResult, _Mapping]] = ..., ok: _Optional[_Union[Ok, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., lookup_result: _Optional[_Union[LookupResult, _Mapping]] = ..., channel_head: _Optional[_Union[ChannelHead, _Mapping]] = ...) -> None: ...
