"""PEFT adapter directories (adapter_config.json + adapter_model.safetensors) with NumPy alone.

safetensors is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the bytes; this reads F32/F16/BF16 and writes F32.
"""

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def read_adapter(directory):
    """The adapter in `directory`: (its config dict, {tensor name: float32 array})."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())
    data = (directory / WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        if info["dtype"] == "F32":
            values = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "F16":
            values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif info["dtype"] == "BF16":
            values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{directory / WEIGHTS}: tensor {name} is {info['dtype']}, not F32/F16/BF16")
        tensors[name] = values.reshape(info["shape"]).astype(np.float32)
    return config, tensors


def write_adapter(directory, config, tensors):
    """Writes `directory` (replaced whole: built beside it, then renamed over it)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    with open(staging / WEIGHTS, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        f.flush()
        os.fsync(f.fileno())
    with open(staging / CONFIG, "w") as f:
        json.dump(config, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        os.rename(directory, old)
        os.rename(staging, directory)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        os.rename(staging, directory)
