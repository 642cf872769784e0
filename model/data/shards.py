"""Prepared rows on disk: sharded TFRecord files and a manifest, streamed back with tf.data.

``afm-ctr prepare`` runs a protocol once (``model.data.protocols.prepare``), encodes every row
into the model's integer ids (``PreparedData.encode``, the vocabularies taken from the
training rows exactly as the in-memory trainer takes them) and writes::

    <dir>/manifest.json                  Manifest: fields, vocabularies, rows, protocol, seed
    <dir>/train-00000-of-00008.tfrecord  training rows, one seeded global shuffle, cut in shards
    <dir>/valid-00000-of-00001.tfrecord  validation rows, protocol order
    <dir>/test-00000-of-00001.tfrecord   test rows, protocol order

``afm-ctr train --prepared DIR`` then streams the rows (``training_batches``): shards in a
per-epoch order, interleaved, a shuffle buffer, prefetch. Memory holds the buffer, not the
data, so it stays flat as the data grows; training needs no string lookups.

Why TFRecord: tf.data reads it natively (``TFRecordDataset``, parallel interleave, sharding
per worker) and it needs no new dependency. Parquet would bring pyarrow as a new pinned
dependency, and tf.data cannot read Parquet without a Python generator in the input path.

A record is a block of up to BLOCK_ROWS rows, not one row: ``ids`` (int32, rows x S, the
single-valued fields in field order), one int32 rows x L matrix per multi-valued field
(padded with ``dataset.PAD``; L is HISTORY_LENGTH for the watched movies of ``--fields
history``, whose rows carry them), ``label`` (float32), and for test rows of movies kept out of
training (``--holdout-movies``) a ``held_out`` flag (uint8). Each is the array's raw
little-endian bytes, so parsing a record is one ``decode_raw`` per column: no per-row proto
decoding. Training rows are shuffled once when written; each epoch shuffles shard order and
blocks within a buffer, so batches differ from epoch to epoch without per-row work.

The directory appears by one rename of a complete temporary directory, manifest included:
a reader never sees half a prepared set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.contracts.export_format import FIELD_SETS
from model.data.dataset import SINGLE_INPUT, LabeledRows, PreparedData
from model.errors import AfmError
from model.network.afm import split_fields

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
BLOCK_ROWS = 256  # rows per record: 16 records make one batch of 4096
DEFAULT_SHARDS = 8
DEFAULT_SHUFFLE_ROWS = 1 << 18  # rows in the shuffle buffer: ~15 MB with eight fields
WRITE_CHUNK_ROWS = 1 << 20  # rows encoded at once while writing: bounds prepare's extra memory
INTERLEAVE_SHARDS = 4  # shards read at once
LABEL, HELD_OUT = "label", "held_out"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Manifest:
    """What a prepared directory holds; ``manifest.json`` is this, as JSON."""

    directory: Path
    field_set: str  # a key of contract.FIELD_SETS
    vocabularies: dict[str, np.ndarray]  # field -> sorted training values (str)
    bag_widths: dict[str, int]  # multi-valued field -> columns of its id matrix
    splits: dict[str, dict[str, Any]]  # split -> rows, positives, files [{name, rows}]
    protocol: str
    source: str
    extra: dict[str, Any]  # the protocol's details, as metadata.json's `data` records them
    data_config: dict[str, Any]  # the DataConfig the rows were prepared with
    held_out_movies: int | None  # movies kept out of train and valid, if any

    @property
    def fields(self) -> tuple[str, ...]:
        return FIELD_SETS[self.field_set]

    def files(self, split: str) -> list[Path]:
        return [self.directory / f["name"] for f in self.splits[split]["files"]]

    def rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])

    def summary(self) -> dict[str, dict[str, int]]:
        """Rows and positives per split, as ``PreparedData.summary``."""
        return {
            name: {"rows": part["rows"], "positives": part["positives"]}
            for name, part in self.splits.items()
        }

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """The manifest of a prepared directory; AfmError if it is missing or unknown."""
        path = Path(directory) / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise AfmError(
                f"{directory} is not a prepared directory (no {MANIFEST_FILE}); "
                "write one with `afm-ctr prepare --out DIR`"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise AfmError(f"cannot read {path}: {exc}") from None
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise AfmError(
                f"{path} has format_version {raw['format_version']}, newer than this "
                f"afm-ctr's {FORMAT_VERSION}; upgrade afm-ctr"
            )
        manifest = cls(
            directory=Path(directory),
            field_set=raw["field_set"],
            vocabularies={f: np.asarray(v, dtype=str) for f, v in raw["vocabularies"].items()},
            bag_widths={f: int(w) for f, w in raw["bag_widths"].items()},
            splits=raw["splits"],
            protocol=raw["protocol"],
            source=raw["source"],
            extra=raw["extra"],
            data_config=raw["data_config"],
            held_out_movies=raw["held_out_movies"],
        )
        missing = [p.name for s in SPLITS for p in manifest.files(s) if not p.is_file()]
        if missing:
            raise AfmError(f"{directory} lacks shard file(s) {missing[:3]}; prepare it again")
        return manifest


# ---------------------------------------------------------------- writing


def write_prepared(
    data: PreparedData,
    field_set: str,
    out: Path,
    *,
    shards: int = DEFAULT_SHARDS,
    seed: int = 42,
    data_config: Mapping[str, Any] | None = None,
) -> Manifest:
    """Encode ``data``'s rows for ``field_set`` and write them as a prepared directory ``out``.

    Training rows are shuffled once (``np.random.default_rng([seed, 2])``) and cut into
    ``shards`` files of equal size (±1 row), so a worker that reads some shards sees rows
    from every user; validation and test rows keep the protocol's order in one file each.
    ``out`` must not exist, or be an empty directory.
    """
    if shards < 1:
        raise AfmError(f"shards must be at least 1, got {shards}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AfmError(f"{out} already exists and is not empty; choose a new --out directory")
    fields = FIELD_SETS[field_set]
    vocabularies = data.vocabularies(fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        order = np.random.default_rng([seed, 2]).permutation(len(data.train)).astype(np.int64)
        held = data.held_out_movies
        splits, bag_widths = {}, {}
        for name, rows, count, index in (
            ("train", data.train, shards, order),
            ("valid", data.valid, 1, None),
            ("test", data.test, 1, None),
        ):
            files = []
            bounds = np.linspace(0, len(rows), count + 1).astype(np.int64)
            for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                file_name = f"{name}-{shard:05d}-of-{count:05d}.tfrecord"
                picked = np.arange(lo, hi) if index is None else index[lo:hi]
                held_rows = held if name == "test" else None
                widths = _write_shard(tmp / file_name, data, rows, picked, vocabularies, held_rows)
                bag_widths.update(widths)
                files.append({"name": file_name, "rows": int(hi - lo)})
            splits[name] = {
                "rows": len(rows),
                "positives": int(np.count_nonzero(rows.label)),
                "files": files,
            }
        record = {
            "format_version": FORMAT_VERSION,
            "field_set": field_set,
            "fields": list(fields),
            "vocabularies": {f: [str(v) for v in vocabularies[f]] for f in fields},
            "bag_widths": _bag_widths(fields, bag_widths),
            "splits": splits,
            "protocol": data.protocol,
            "source": data.source,
            "extra": data.extra,
            "data_config": dict(data_config or {}),
            "held_out_movies": None if held is None else len(held),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except OSError as exc:
        raise AfmError(f"cannot write the prepared rows to {out}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.load(out)


def _bag_widths(fields: Sequence[str], seen: Mapping[str, int]) -> dict[str, int]:
    """Width per multi-valued field; a field with no rows written gets width 1."""
    return {f: int(seen.get(f, 1)) for f in split_fields(fields)[1]}


def _write_shard(
    path: Path,
    data: PreparedData,
    rows: LabeledRows,
    picked: np.ndarray,
    vocabularies: Mapping[str, np.ndarray],
    held_out_movies: np.ndarray | None,
) -> dict[str, int]:
    """Write rows ``picked`` of ``rows``, encoded, to one TFRecord file; return bag widths.

    Rows are encoded WRITE_CHUNK_ROWS at a time, so writing needs memory for one chunk.
    """
    import tensorflow as tf

    fields = list(vocabularies)
    widths: dict[str, int] = {}
    with tf.io.TFRecordWriter(str(path)) as writer:
        for start in range(0, len(picked), WRITE_CHUNK_ROWS):
            at = picked[start : start + WRITE_CHUNK_ROWS]
            chunk = rows.take(at)
            columns = {**data.encode(chunk, vocabularies, fields), LABEL: chunk.label}
            widths.update({f: v.shape[1] for f, v in columns.items() if v.ndim == 2})
            if held_out_movies is not None:
                columns[HELD_OUT] = np.isin(chunk.movie_idx, held_out_movies).astype(np.uint8)
            for block in range(0, len(at), BLOCK_ROWS):
                writer.write(_block_record(columns, block))
    widths.pop(SINGLE_INPUT, None)
    return widths


def _block_record(columns: Mapping[str, np.ndarray], start: int) -> bytes:
    """One record: rows ``start`` to ``start + BLOCK_ROWS`` of each column, as raw
    little-endian bytes (int32 ids, float32 label, uint8 flags)."""
    import tensorflow as tf

    dtypes = {LABEL: "<f4", HELD_OUT: "u1"}
    feature = {
        name: tf.train.Feature(
            bytes_list=tf.train.BytesList(
                value=[values[start : start + BLOCK_ROWS].astype(dtypes.get(name, "<i4")).tobytes()]
            )
        )
        for name, values in columns.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ---------------------------------------------------------------- reading


def _parser(manifest: Manifest, split: str) -> Any:
    """A function: one serialized record -> ((inputs by name, labels), held-out flags or None)."""
    import tensorflow as tf

    single, multi = split_fields(manifest.fields)
    with_held = split == "test" and manifest.held_out_movies is not None
    names = [SINGLE_INPUT, *multi, LABEL] + ([HELD_OUT] if with_held else [])
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in names}
    widths = {SINGLE_INPUT: len(single), **manifest.bag_widths}

    def parse(record: tf.Tensor) -> Any:
        raw = tf.io.parse_single_example(record, spec)
        inputs = {
            name: tf.reshape(tf.io.decode_raw(raw[name], tf.int32), [-1, widths[name]])
            for name in (SINGLE_INPUT, *multi)
        }  # (rows, S) and (rows, L) per bag
        labels = tf.io.decode_raw(raw[LABEL], tf.float32)  # (rows,)
        if with_held:
            return inputs, labels, tf.io.decode_raw(raw[HELD_OUT], tf.uint8)
        return inputs, labels

    return parse


def training_batches(
    manifest: Manifest,
    files: Sequence[Path],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle_rows: int = DEFAULT_SHUFFLE_ROWS,
    steps: int | None = None,
) -> Any:
    """One epoch over ``files`` (training shards) as a ``tf.data.Dataset`` of (inputs, labels).

    Shard order is shuffled per epoch, INTERLEAVE_SHARDS shards are read at once, records
    (blocks of rows) pass a shuffle buffer of ``shuffle_rows`` rows, then are cut into
    batches of ``batch_size`` rows; the last batch may be smaller unless ``steps`` is given,
    in which case exactly ``steps`` full batches are yielded (multi-worker training needs
    every worker to run the same number of steps). ``seed`` and ``epoch`` fix the order.
    """
    import tensorflow as tf

    epoch_seed = seed * 1_000_003 + epoch  # one stream per (seed, epoch)
    names = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    names = names.shuffle(len(files), seed=epoch_seed)
    records = names.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(INTERLEAVE_SHARDS, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    blocks = records.map(_parser(manifest, "train"), num_parallel_calls=tf.data.AUTOTUNE)
    blocks = blocks.shuffle(max(1, shuffle_rows // BLOCK_ROWS), seed=epoch_seed + 1)
    batches = blocks.rebatch(batch_size, drop_remainder=steps is not None)
    if steps is not None:
        batches = batches.take(steps)
    return batches.prefetch(tf.data.AUTOTUNE)


def evaluation_batches(manifest: Manifest, split: str, batch_size: int) -> Any:
    """``split`` in file order as (inputs, labels) batches (test: plus held-out flags if any)."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset([str(f) for f in manifest.files(split)])
    blocks = records.map(_parser(manifest, split), num_parallel_calls=tf.data.AUTOTUNE)
    return blocks.rebatch(batch_size).prefetch(tf.data.AUTOTUNE)


def worker_files(manifest: Manifest, worker: int, workers: int) -> list[Path]:
    """The training shards worker ``worker`` of ``workers`` reads: every workers-th one."""
    files = manifest.files("train")
    if len(files) < workers:
        raise AfmError(
            f"{manifest.directory} has {len(files)} training shards for {workers} workers; "
            f"prepare it again with --shards {workers} or more"
        )
    return files[worker::workers]


def worker_rows(manifest: Manifest, worker: int, workers: int) -> int:
    """Training rows in ``worker_files(manifest, worker, workers)``."""
    rows = [int(f["rows"]) for f in manifest.splits["train"]["files"]]
    return sum(rows[worker::workers])
