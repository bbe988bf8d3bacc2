from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("png", "blob_key")
    PNG_FIELD_NUMBER: _ClassVar[int]
    BLOB_KEY_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    blob_key: str
    def __init__(self, png: _Optional[bytes] = ..., blob_key: _Optional[str] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("png",)
    PNG_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    def __init__(self, png: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("steps", "guidance", "seed", "scheduler")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    steps: int
    guidance: float
    seed: int
    scheduler: str
    def __init__(self, steps: _Optional[int] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., scheduler: _Optional[str] = ...) -> None: ...
