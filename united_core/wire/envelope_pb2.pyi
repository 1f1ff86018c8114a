from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_TEXT: _ClassVar[MessageType]
    MESSAGE_TYPE_TEST: _ClassVar[MessageType]
    MESSAGE_TYPE_EDIT: _ClassVar[MessageType]
    MESSAGE_TYPE_DELETE: _ClassVar[MessageType]
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_TEXT: MessageType
MESSAGE_TYPE_TEST: MessageType
MESSAGE_TYPE_EDIT: MessageType
MESSAGE_TYPE_DELETE: MessageType

class Envelope(_message.Message):
    __slots__ = ("sender_pubkey", "signature", "topic", "message_type", "timestamp", "sequence_hint", "payload")
    SENDER_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_HINT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    sender_pubkey: bytes
    signature: bytes
    topic: str
    message_type: MessageType
    timestamp: int
    sequence_hint: int
    payload: bytes
    def __init__(self, sender_pubkey: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., topic: _Optional[str] = ..., message_type: _Optional[_Union[MessageType, str]] = ..., timestamp: _Optional[int] = ..., sequence_hint: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...
