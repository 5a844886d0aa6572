"""The Open Inference Protocol's gRPC messages and service, built from ``grpc_predict_v2.proto``.

The classes are made from the serialized descriptor in ``descriptor.py`` (``python -m service.proto.generate``)
in a descriptor pool of this module's own, rather than by protoc's ``--python_out`` code, for two reasons:

- protoc's Python code registers its messages in protobuf's *default* pool, where ``tritonclient.grpc``
  registers the same ``inference.*`` names from its own file: whichever is imported second fails ("duplicate
  file name" / "duplicate symbol"), so a process could not hold the server and that client at once (our
  tests do; so may a user's notebook).
- protoc's Python code refuses a protobuf runtime older than the protoc that made it, which would tie the
  serving image to the developer's grpcio-tools; a descriptor is read by any protobuf runtime from 4.21 on.

Message classes are module attributes (``proto.ModelInferRequest()``); :data:`METHODS` maps each RPC name of
``inference.GRPCInferenceService`` to its request and response classes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from service.proto.descriptor import SERIALIZED

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(SERIALIZED)


def message_class(name: str) -> Any:
    """The class of message ``inference.<name>`` (nested messages as ``Outer.Inner``)."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = message_class("ServerLiveRequest")
ServerLiveResponse = message_class("ServerLiveResponse")
ServerReadyRequest = message_class("ServerReadyRequest")
ServerReadyResponse = message_class("ServerReadyResponse")
ModelReadyRequest = message_class("ModelReadyRequest")
ModelReadyResponse = message_class("ModelReadyResponse")
ServerMetadataRequest = message_class("ServerMetadataRequest")
ServerMetadataResponse = message_class("ServerMetadataResponse")
ModelMetadataRequest = message_class("ModelMetadataRequest")
ModelMetadataResponse = message_class("ModelMetadataResponse")
InferParameter = message_class("InferParameter")
InferTensorContents = message_class("InferTensorContents")
ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")
ModelRepositoryParameter = message_class("ModelRepositoryParameter")
RepositoryIndexRequest = message_class("RepositoryIndexRequest")
RepositoryIndexResponse = message_class("RepositoryIndexResponse")
RepositoryModelLoadRequest = message_class("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = message_class("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = message_class("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = message_class("RepositoryModelUnloadResponse")

#: RPC name -> (request class, response class), in the order the service declares them.
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in _pool.FindServiceByName(SERVICE).methods
}


def method_path(name: str) -> str:
    """The HTTP/2 path of RPC ``name``: ``/inference.GRPCInferenceService/<name>``."""
    return f"/{SERVICE}/{name}"
