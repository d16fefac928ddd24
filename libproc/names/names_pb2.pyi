from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Instance(_message.Message):
    __slots__ = ("name", "pid", "user_data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    pid: str
    user_data: str
    def __init__(self, name: _Optional[str] = ..., pid: _Optional[str] = ..., user_data: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("request_id", "instance", "secret", "replace")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    instance: Instance
    secret: str
    replace: bool
    def __init__(self, request_id: _Optional[int] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ..., secret: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("request_id", "ok", "reason", "incarnation")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ok: bool
    reason: str
    incarnation: str
    def __init__(self, request_id: _Optional[int] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class UnregisterRequest(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    name: str
    def __init__(self, request_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class UnregisterResponse(_message.Message):
    __slots__ = ("request_id", "ok", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ok: bool
    reason: str
    def __init__(self, request_id: _Optional[int] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("query", "secret")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    query: str
    secret: str
    def __init__(self, query: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class WatchSnapshot(_message.Message):
    __slots__ = ("query", "ok", "reason", "instances", "recovering", "incarnation")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RECOVERING_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    query: str
    ok: bool
    reason: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    recovering: bool
    incarnation: str
    def __init__(self, query: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., recovering: _Optional[bool] = ..., incarnation: _Optional[str] = ...) -> None: ...

class UnwatchRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: str
    def __init__(self, query: _Optional[str] = ...) -> None: ...

class InstanceNotice(_message.Message):
    __slots__ = ("kind", "instance", "reason")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ONLINE: _ClassVar[InstanceNotice.Kind]
        OFFLINE: _ClassVar[InstanceNotice.Kind]
    ONLINE: InstanceNotice.Kind
    OFFLINE: InstanceNotice.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: InstanceNotice.Kind
    instance: Instance
    reason: str
    def __init__(self, kind: _Optional[_Union[InstanceNotice.Kind, str]] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("seq", "timeout", "incarnation")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    timeout: float
    incarnation: str
    def __init__(self, seq: _Optional[int] = ..., timeout: _Optional[float] = ..., incarnation: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Evicted(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...
