"""A run's logged metrics as rows, from its CSV logs or, for a run logged to W&B only, from the W&B
run's own transaction log.

W&B writes every run's history to `<save_dir>/wandb/[offline-]run-<time>-<id>/run-<id>.wandb`, in
offline and online mode alike, so one reader serves both, with no network or API key. wandb 0.31
has no Python reader for it any more (the old `wandb.sdk.internal.datastore` moved into the Go
`wandb-core`), so the file format is read here: LevelDB's log format (32 KiB blocks of records,
each with a crc32, a length and a full/first/middle/last kind) after a 7-byte `:W&B` header, each
record a `wandb_internal_pb2.Record` protobuf; the history ones hold a logged row as JSON values.

A run resumed from its last checkpoint logs again from that step: a later log's rows replace the
earlier one's from the step it resumed at (stage.json's `resumed_at`, by log index).
"""

from __future__ import annotations

import csv
import json
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from lmdisc.errors import LmdiscError

_FILE_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version 0
_RECORD_HEADER = struct.Struct("<IHB")  # crc32 of kind + payload, payload length, kind
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_RUN_DIR_TIME = re.compile(r"run-(\d{8}_\d{6})-")


def csv_log_versions(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(N, directory) of each csv/version_N a run's CSV logger wrote, in order."""
    found = Path(out_dir).glob("csv/version_*")
    return sorted((int(p.name[8:]), p) for p in found if p.name[8:].isdigit())


def wandb_run_files(out_dir: str | Path) -> list[Path]:
    """Each W&B run's transaction log under a run directory, in the order the runs started."""

    def started(path: Path) -> tuple[str, int]:
        match = _RUN_DIR_TIME.search(path.parent.name)
        return (match.group(1) if match else "", path.stat().st_mtime_ns)

    return sorted(Path(out_dir).rglob("run-*.wandb"), key=started)


def next_log_index(out_dir: str | Path) -> int:
    """The index the next process's logs will have (CSV version N, or the Nth W&B run)."""
    last_csv = max((n for n, _ in csv_log_versions(out_dir)), default=-1)
    return max(last_csv + 1, len(wandb_run_files(out_dir)))


def _number(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _csv_logs(out_dir: Path) -> list[tuple[int, list[dict]]]:
    logs = []
    for version, log_dir in csv_log_versions(out_dir):
        if not (log_dir / "metrics.csv").is_file():
            continue
        with open(log_dir / "metrics.csv", encoding="utf-8") as handle:
            rows = []
            for row in csv.DictReader(handle):
                try:
                    step = int(row.pop("step"))
                except (KeyError, TypeError, ValueError):  # a row cut short when a run was killed
                    continue
                rows.append({"step": step, **{k: _number(v) for k, v in row.items() if k and v}})
        logs.append((version, rows))
    return logs


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a .wandb file; a tail cut short (a run killed mid-write) ends them."""
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size or _FILE_HEADER.unpack_from(data)[:2] != (b":W&B", 0xBEE1):
        raise LmdiscError(f"{path} is not a W&B transaction log")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _RECORD_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if left < _RECORD_HEADER.size or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        payload = data[pos + _RECORD_HEADER.size : pos + _RECORD_HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += _RECORD_HEADER.size + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload


def _wandb_rows(path: Path) -> list[dict]:
    """A W&B run's history rows; `step` is Lightning's global step (`trainer/global_step`) as in a
    CSV log, else W&B's own `_step`; W&B's bookkeeping keys (`_runtime`, ...) are left out."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {
            (item.key or ".".join(item.nested_key)): json.loads(item.value_json)
            for item in record.history.item
        }
        step = row.pop("trainer/global_step", row.get("_step", record.history.step.num))
        rows.append({"step": int(step), **{k: v for k, v in row.items() if not k.startswith("_")}})
    return rows


def metric_rows(run_dir: str | Path, resumed_at: Mapping[str, int] | None = None) -> list[dict]:
    """Every logged row of a run directory's logs, in order (`step` plus each metric logged there,
    as numbers): its CSV logs if it has any, else its W&B runs'. From a resumed log's first step
    (or its `resumed_at` step) on, its rows replace the earlier logs'."""
    run_dir = Path(run_dir)
    logs = _csv_logs(run_dir) or [(i, _wandb_rows(path)) for i, path in enumerate(wandb_run_files(run_dir))]
    rows: list[dict] = []
    for index, later in logs:
        cut = (resumed_at or {}).get(str(index), min((r["step"] for r in later), default=None))
        rows = [r for r in rows if cut is None or r["step"] < cut] + later
    return rows
