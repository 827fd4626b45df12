"""Datasets for training: arrays from an npz or safetensors blob, checked against the network's input.

A dataset holds ``x`` (features) and ``y`` (integer class labels), and optionally
``x_test``/``y_test``; without a test set a fixed, stratified-by-seed share of the
rows is held out. Batches are numbered: the number is what lets a VNode drop a
late or duplicated batch and never count one twice.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from phage.errors import InvalidInput
from phage.training.blocks import Shape

MAX_ROWS = 10_000_000


@dataclass(frozen=True)
class Dataset:
    """Training and held-out rows."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]

    def batches_per_epoch(self, batch_size: int) -> int:
        """How many batches one pass over the training rows makes."""
        return (len(self.x) + batch_size - 1) // batch_size

    def batch(
        self, seq: int, batch_size: int, seed: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Batch number ``seq`` (counting across epochs): the same rows wherever it is asked for."""
        per = self.batches_per_epoch(batch_size)
        epoch, i = divmod(seq, per)
        order = np.random.default_rng(seed * 7919 + epoch).permutation(len(self.x))
        idx = order[i * batch_size : (i + 1) * batch_size]
        return self.x[idx], self.y[idx]

    def iter_batches(
        self, epochs: int, batch_size: int, seed: int
    ) -> Iterator[tuple[int, npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
        """Every batch of ``epochs`` passes, numbered."""
        for seq in range(epochs * self.batches_per_epoch(batch_size)):
            yield (seq, *self.batch(seq, batch_size, seed))


def _arrays(blob: bytes) -> dict[str, np.ndarray]:
    if blob[:4] == b"PK\x03\x04":  # npz is a zip archive
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:
            raise InvalidInput(f"dataset is not a readable npz file: {exc}", field="dataset") from None
    try:
        from safetensors.numpy import load

        return dict(load(blob))
    except Exception as exc:
        raise InvalidInput(f"dataset is neither npz nor safetensors: {exc}", field="dataset") from None


def load_dataset(blob: bytes, input_shape: Shape, classes: int, *, test_share: float = 0.25) -> Dataset:
    """Read and check a dataset for a network with this input shape and class count."""
    arrays = _arrays(blob)
    for key in ("x", "y"):
        if key not in arrays:
            raise InvalidInput(
                f"dataset has no array {key!r} (it has {sorted(arrays)})", field=f"dataset.{key}"
            )
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(input_shape):
        raise InvalidInput(
            f"dataset rows have shape {list(x.shape[1:])} but the first VNodes take {list(input_shape)}",
            field="dataset.x",
        )
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidInput(f"y must be one label per row of x ({len(x)})", field="dataset.y")
    if not 1 < len(x) <= MAX_ROWS:
        raise InvalidInput(f"a dataset has 2 to {MAX_ROWS} rows", field="dataset.x")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise InvalidInput(f"labels must be integers in [0, {classes})", field="dataset.y")
    x = x.astype(np.float32, copy=False)
    y = y.astype(np.int64, copy=False)
    if "x_test" in arrays and "y_test" in arrays:
        xt, yt = arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)
        if tuple(xt.shape[1:]) != tuple(input_shape) or len(xt) != len(yt):
            raise InvalidInput("x_test/y_test do not match x/y", field="dataset.x_test")
        return Dataset(x, y, xt, yt)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * (1 - test_share))
    return Dataset(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])


def dataset_bytes(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None
) -> bytes:
    """An npz blob of these arrays (what ``phage train --data`` uploads)."""
    buf = io.BytesIO()
    arrays = {"x": x, "y": y}
    if x_test is not None and y_test is not None:
        arrays.update(x_test=x_test, y_test=y_test)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
