"""The gRPC protocol definition: up to date with its .proto, and wire-compatible with the published one.

The independent truth is Triton's published ``grpc_service.proto``, as compiled into ``tritonclient.grpc``:
every message and RPC we declare must exist there with the same field names, numbers, types and labels, so
that a real client and our server read each other's bytes the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pb2

from service import proto
from service.proto import generate


def test_descriptor_is_generated_from_the_committed_proto():
    assert generate.committed() == generate.compile_proto(), "run: python -m service.proto.generate"
    assert generate.main(["--check"]) == 0


def test_render_round_trips():
    fresh = generate.compile_proto()
    namespace: dict[str, Any] = {}
    exec(compile(generate.render(fresh), "descriptor.py", "exec"), namespace)
    assert descriptor_pb2.FileDescriptorProto.FromString(namespace["SERIALIZED"]) == fresh


def _fields(message: Any) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "")
        for f in message.fields
    }


def _all_messages(file: Any) -> list[Any]:
    out = []
    stack = list(file.message_types_by_name.values())
    while stack:
        message = stack.pop()
        out.append(message)
        stack.extend(message.nested_types)
    return out


def test_every_message_matches_the_published_protocol():
    ours = proto.ModelInferRequest.DESCRIPTOR.file
    theirs = triton_grpc.service_pb2.DESCRIPTOR
    messages = _all_messages(ours)
    assert len(messages) >= 30
    for message in messages:
        published = theirs.pool.FindMessageTypeByName(message.full_name)
        mine, reference = _fields(message), _fields(published)
        assert mine.keys() <= reference.keys(), (
            f"{message.full_name}: {sorted(mine.keys() - reference.keys())}"
        )
        for name, spec in mine.items():
            assert spec == reference[name], f"{message.full_name}.{name}: {spec} != {reference[name]}"
        assert [o.name for o in message.oneofs] == [o.name for o in published.oneofs]


def test_every_rpc_matches_the_published_service():
    published = triton_grpc.service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert proto.SERVICE == published.full_name
    for name, (request, response) in proto.METHODS.items():
        method = published.methods_by_name[name]
        assert (request.DESCRIPTOR.full_name, response.DESCRIPTOR.full_name) == (
            method.input_type.full_name,
            method.output_type.full_name,
        )
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    } <= set(proto.METHODS)
    assert {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"} <= set(proto.METHODS)


def test_bytes_cross_between_our_classes_and_tritonclients():
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    ours = proto.ModelInferRequest(
        model_name="m", model_version="2", id="r-1", raw_input_contents=[x.tobytes()]
    )
    tensor = ours.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    tensor.parameters["p"].int64_param = 7
    ours.outputs.add(name="label")
    theirs = triton_grpc.service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.model_version, theirs.id) == ("m", "2", "r-1")
    assert list(theirs.inputs[0].shape) == [2, 3] and theirs.inputs[0].parameters["p"].int64_param == 7
    assert theirs.outputs[0].name == "label"
    assert np.array_equal(np.frombuffer(theirs.raw_input_contents[0], "<f4").reshape(2, 3), x)
    back = proto.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == ours
