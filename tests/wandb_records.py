"""Reading an offline wandb run from disk: the records of its `run-<id>.wandb` file.

The file is a header (":W&B", magic 0xBEE1, version) and then LevelDB-log records in 32 KiB blocks: each
chunk has a CRC (4 bytes), a length (2, little-endian) and a type (1: whole, 2/3/4: first/middle/last).
Each record is a protobuf `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, CHUNK_HEADER, FILE_HEADER = 32768, 7, 7


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = FILE_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # the block's tail is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0:  # zero fill to the end of the block
            pos += left
            continue
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + payload)
            pending = b""
            yield record
        else:
            pending = (pending if kind == 3 else b"") + payload


def offline_run(run_dir: Path) -> dict:
    """The run's group, job type, name, config, last logged values and summary, as plain Python."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    found = {"config": {}, "history": {}, "summary": {}, "exit_code": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            found.update(group=run.run_group, job_type=run.job_type, name=run.display_name, project=run.project)
            found["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            found["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            found["history"].update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            found["summary"].update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
            )
        elif kind == "exit":
            found["exit_code"] = record.exit.exit_code
    return found
