"""Flower's own code as the judge of adaptkit's Fleet protocol (core/tests/flower_protocol.rs).

  flwr_check.py check DIR   DIR holds objects adaptkit made (one file per object id), root.txt
                            (the message id), expected.json (the arrays' values) and
                            headers.json (a signed request's headers). Flower validates every
                            object, inflates the message, recomputes every id with its own
                            deflate (they must equal adaptkit's: same bytes), checks the arrays
                            and verifies the signature.
  flwr_check.py make DIR    Flower makes a train instruction (a RecordDict as its strategies
                            send it) and writes its objects, root.txt and expected.json, for
                            adaptkit to inflate and read.
"""

import base64
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents, validate_object_content
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature
from flwr.supercore.task_identity import TaskIdentity


def check(directory):
    root = (directory / "root.txt").read_text().strip()
    contents = {p.name: p.read_bytes() for p in directory.iterdir() if len(p.name) == 64}
    for object_id, content in contents.items():
        validate_object_content(content)
    message = inflate_object_from_contents(root, dict(contents), keep_object_contents=True)
    assert isinstance(message, Message), type(message)
    recomputed = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    for object_id, content in recomputed.items():
        assert object_id in contents, f"flwr's object {object_id} is not one adaptkit made"
        assert contents[object_id] == content, f"object {object_id}: flwr writes other bytes"
    assert set(recomputed) == set(contents), f"adaptkit made objects flwr does not: {set(contents) - set(recomputed)}"
    assert message.object_id == root, (message.object_id, root)
    expected = json.loads((directory / "expected.json").read_text())
    arrays = message.content.array_records["arrays"]
    for name, values in expected["arrays"].items():
        got = arrays[name].numpy()
        assert got.dtype == np.float32, got.dtype
        assert np.array_equal(got.ravel(), np.asarray(values, np.float32)), name
    assert dict(message.content.config_records["config"]) == expected["config"], dict(message.content.config_records["config"])
    assert message.metadata.message_type == expected["message_type"]
    headers = json.loads((directory / "headers.json").read_text())
    key = bytes_to_public_key(base64.b64decode(headers["flwr-public-key"], validate=True))
    datetime.datetime.fromisoformat(headers["flwr-timestamp"])
    signature = base64.b64decode(headers["flwr-signature"], validate=True)
    assert verify_signature(key, headers["flwr-timestamp"].encode("ascii"), signature), "signature"
    assert not verify_signature(key, b"another time", signature), "a signature that verifies anything"
    print(f"flwr agrees: {len(contents)} objects, message {root[:16]}, signature verified")


def make(directory):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    big = rng.standard_normal((2, 700_000)).astype(np.float32)  # 5.6 MB: two chunks
    arrays = {"a.lora_A.weight": rng.standard_normal((4, 6)).astype(np.float32), "a.lora_B.weight": np.zeros((5, 4), np.float32), "big": big}
    config = {"adapter-config": json.dumps({"peft_type": "LORA", "r": 4}), "base": "f" * 64, "steps": 3, "lr": 0.01, "server-round": 2}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "config": ConfigRecord(config)})
    # What a ServerApp's process has set before its strategy makes messages.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 123, 9, 1
    message = Message(content=content, dst_node_id=42, message_type="train")
    for object_id, obj in get_all_nested_objects(message).items():
        (directory / object_id).write_bytes(obj.deflate())
    (directory / "root.txt").write_text(message.object_id)
    summary = {k: [list(v.shape), float(v.sum())] for k, v in arrays.items()}
    (directory / "expected.json").write_text(json.dumps({"arrays": summary, "config": config}))
    print(f"flwr made {len(list(directory.iterdir())) - 2} objects, message {message.object_id[:16]}")


if __name__ == "__main__":
    {"check": check, "make": make}[sys.argv[1]](Path(sys.argv[2]))
