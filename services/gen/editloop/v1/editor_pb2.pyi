from services.gen.editloop.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InpaintRequest(_message.Message):
    __slots__ = ("image", "mask", "prompt", "num_images", "params", "model", "record")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    mask: _common_pb2.Mask
    prompt: str
    num_images: int
    params: _common_pb2.SamplingParams
    model: _common_pb2.ModelRef
    record: bool
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., mask: _Optional[_Union[_common_pb2.Mask, _Mapping]] = ..., prompt: _Optional[str] = ..., num_images: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., record: _Optional[bool] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("image", "instruction", "num_images", "params", "image_guidance", "model", "record", "start")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    instruction: str
    num_images: int
    params: _common_pb2.SamplingParams
    image_guidance: float
    model: _common_pb2.ModelRef
    record: bool
    start: str
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., instruction: _Optional[str] = ..., num_images: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., image_guidance: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., record: _Optional[bool] = ..., start: _Optional[str] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("images", "model", "params", "generation_id", "start")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    model: _common_pb2.ModelRef
    params: _common_pb2.SamplingParams
    generation_id: str
    start: str
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., generation_id: _Optional[str] = ..., start: _Optional[str] = ...) -> None: ...
