from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PENDING: _ClassVar[TaskState]
    STAGING: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    FINISHED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    KILLED: _ClassVar[TaskState]
    LOST: _ClassVar[TaskState]
PENDING: TaskState
STAGING: TaskState
RUNNING: TaskState
FINISHED: TaskState
FAILED: TaskState
KILLED: TaskState
LOST: TaskState

class TaskID(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class SlaveID(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class Auth(_message.Message):
    __slots__ = ("counter", "mac")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    counter: int
    mac: bytes
    def __init__(self, counter: _Optional[int] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpus", "mem")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEM_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    mem: float
    def __init__(self, cpus: _Optional[float] = ..., mem: _Optional[float] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("cpu_seconds", "mem_mib", "mem_peak_mib", "source", "timestamp")
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEM_MIB_FIELD_NUMBER: _ClassVar[int]
    MEM_PEAK_MIB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    mem_mib: float
    mem_peak_mib: float
    source: str
    timestamp: float
    def __init__(self, cpu_seconds: _Optional[float] = ..., mem_mib: _Optional[float] = ..., mem_peak_mib: _Optional[float] = ..., source: _Optional[str] = ..., timestamp: _Optional[float] = ...) -> None: ...

class Isolation(_message.Message):
    __slots__ = ("mode", "cgroup_version", "cpu_limit", "task_pids_max")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TASK_PIDS_MAX_FIELD_NUMBER: _ClassVar[int]
    mode: str
    cgroup_version: str
    cpu_limit: str
    task_pids_max: int
    def __init__(self, mode: _Optional[str] = ..., cgroup_version: _Optional[str] = ..., cpu_limit: _Optional[str] = ..., task_pids_max: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("name", "task_id", "progress", "state", "attempt", "usage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    task_id: TaskID
    progress: float
    state: TaskState
    attempt: int
    usage: ResourceUsage
    def __init__(self, name: _Optional[str] = ..., task_id: _Optional[_Union[TaskID, _Mapping]] = ..., progress: _Optional[float] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempt: _Optional[int] = ..., usage: _Optional[_Union[ResourceUsage, _Mapping]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "task_id", "command", "resources", "timeout", "attempt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    task_id: TaskID
    command: str
    resources: Resources
    timeout: float
    attempt: int
    def __init__(self, name: _Optional[str] = ..., task_id: _Optional[_Union[TaskID, _Mapping]] = ..., command: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., timeout: _Optional[float] = ..., attempt: _Optional[int] = ...) -> None: ...

class LaunchTasksMessage(_message.Message):
    __slots__ = ("id", "tasks", "slave_id", "auth")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    id: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    slave_id: SlaveID
    auth: Auth
    def __init__(self, id: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class ReportProgressMessage(_message.Message):
    __slots__ = ("tasks", "slave_id", "auth")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    slave_id: SlaveID
    auth: Auth
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class RegisterSlaveMessage(_message.Message):
    __slots__ = ("resources", "hostname", "version", "nonce", "auth", "isolation")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    resources: Resources
    hostname: str
    version: str
    nonce: bytes
    auth: Auth
    isolation: Isolation
    def __init__(self, resources: _Optional[_Union[Resources, _Mapping]] = ..., hostname: _Optional[str] = ..., version: _Optional[str] = ..., nonce: _Optional[bytes] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ..., isolation: _Optional[_Union[Isolation, _Mapping]] = ...) -> None: ...

class RunningTask(_message.Message):
    __slots__ = ("task", "state", "progress")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    state: TaskState
    progress: float
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., progress: _Optional[float] = ...) -> None: ...

class ReregisterSlaveMessage(_message.Message):
    __slots__ = ("slave_id", "resources", "tasks", "hostname", "version", "nonce", "sequence", "auth", "isolation")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    resources: Resources
    tasks: _containers.RepeatedCompositeFieldContainer[RunningTask]
    hostname: str
    version: str
    nonce: bytes
    sequence: int
    auth: Auth
    isolation: Isolation
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[RunningTask, _Mapping]]] = ..., hostname: _Optional[str] = ..., version: _Optional[str] = ..., nonce: _Optional[bytes] = ..., sequence: _Optional[int] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ..., isolation: _Optional[_Union[Isolation, _Mapping]] = ...) -> None: ...

class SlaveRegisteredMessage(_message.Message):
    __slots__ = ("slave_id", "heartbeat_interval", "nonce", "master_nonce", "key", "salt", "auth")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MASTER_NONCE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    heartbeat_interval: float
    nonce: bytes
    master_nonce: bytes
    key: bytes
    salt: bytes
    auth: Auth
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., heartbeat_interval: _Optional[float] = ..., nonce: _Optional[bytes] = ..., master_nonce: _Optional[bytes] = ..., key: _Optional[bytes] = ..., salt: _Optional[bytes] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class SlaveReregisteredMessage(_message.Message):
    __slots__ = ("slave_id", "kill_tasks", "heartbeat_interval", "nonce", "master_nonce", "auth")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    KILL_TASKS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MASTER_NONCE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    kill_tasks: _containers.RepeatedCompositeFieldContainer[TaskID]
    heartbeat_interval: float
    nonce: bytes
    master_nonce: bytes
    auth: Auth
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., kill_tasks: _Optional[_Iterable[_Union[TaskID, _Mapping]]] = ..., heartbeat_interval: _Optional[float] = ..., nonce: _Optional[bytes] = ..., master_nonce: _Optional[bytes] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class RegistrationRefusedMessage(_message.Message):
    __slots__ = ("reason", "nonce", "unknown_slave")
    REASON_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SLAVE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    nonce: bytes
    unknown_slave: bool
    def __init__(self, reason: _Optional[str] = ..., nonce: _Optional[bytes] = ..., unknown_slave: _Optional[bool] = ...) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("task_id", "state", "slave_id", "exit_code", "message", "progress", "uuid", "timestamp", "attempt", "usage")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: TaskID
    state: TaskState
    slave_id: SlaveID
    exit_code: int
    message: str
    progress: float
    uuid: bytes
    timestamp: float
    attempt: int
    usage: ResourceUsage
    def __init__(self, task_id: _Optional[_Union[TaskID, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., progress: _Optional[float] = ..., uuid: _Optional[bytes] = ..., timestamp: _Optional[float] = ..., attempt: _Optional[int] = ..., usage: _Optional[_Union[ResourceUsage, _Mapping]] = ...) -> None: ...

class StatusUpdateMessage(_message.Message):
    __slots__ = ("update", "auth")
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    update: StatusUpdate
    auth: Auth
    def __init__(self, update: _Optional[_Union[StatusUpdate, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class StatusUpdateAcknowledgementMessage(_message.Message):
    __slots__ = ("slave_id", "task_id", "uuid", "auth")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    task_id: TaskID
    uuid: bytes
    auth: Auth
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., task_id: _Optional[_Union[TaskID, _Mapping]] = ..., uuid: _Optional[bytes] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class KillTaskMessage(_message.Message):
    __slots__ = ("task_id", "slave_id", "auth")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    task_id: TaskID
    slave_id: SlaveID
    auth: Auth
    def __init__(self, task_id: _Optional[_Union[TaskID, _Mapping]] = ..., slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class PingSlaveMessage(_message.Message):
    __slots__ = ("connected", "auth")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    auth: Auth
    def __init__(self, connected: _Optional[bool] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class PongSlaveMessage(_message.Message):
    __slots__ = ("slave_id", "auth")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    auth: Auth
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class UnregisterSlaveMessage(_message.Message):
    __slots__ = ("slave_id", "auth")
    SLAVE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    slave_id: SlaveID
    auth: Auth
    def __init__(self, slave_id: _Optional[_Union[SlaveID, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class ShutdownSlaveMessage(_message.Message):
    __slots__ = ("message", "auth")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    message: str
    auth: Auth
    def __init__(self, message: _Optional[str] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ...) -> None: ...

class NotLeaderMessage(_message.Message):
    __slots__ = ("leader", "reason")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    leader: str
    reason: str
    def __init__(self, leader: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
