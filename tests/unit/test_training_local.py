"""Local-gradient training in one process: checkpoints round-trip, duplicates are dropped, and
on real handwritten digits it lands within 2 points of end-to-end backprop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from phage.errors import InvalidInput  # noqa: E402
from phage.training.data import dataset_bytes, load_dataset  # noqa: E402
from phage.training.local import TrainConfig, accuracy, train_backprop, train_local  # noqa: E402
from phage.training.spec import load_spec_text  # noqa: E402
from phage.training.vnode import VNodeRuntime  # noqa: E402

SPEC = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = datasets.load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def test_local_objectives_match_backprop_on_digits(digits: tuple[np.ndarray, np.ndarray]) -> None:
    torch.set_num_threads(1)
    net = load_spec_text(SPEC)
    data = load_dataset(dataset_bytes(*digits), net.input_shape, net.classes)
    cfg = TrainConfig(epochs=15, batch_size=32, seed=0)
    local = accuracy(net, train_local(net, data, cfg), data.x_test, data.y_test)
    e2e = accuracy(net, train_backprop(net, data, cfg), data.x_test, data.y_test)
    assert e2e > 0.9, e2e
    assert local >= e2e - 0.02, (local, e2e)


def test_checkpoint_round_trip_continues_identically(digits: tuple[np.ndarray, np.ndarray]) -> None:
    net = load_spec_text(SPEC)
    data = load_dataset(dataset_bytes(*digits), net.input_shape, net.classes)
    a = VNodeRuntime(net, "stem", seed=3)
    for seq in range(5):
        xb, yb = data.batch(seq, 32, 3)
        a.train_step(seq, [torch.from_numpy(xb)], torch.from_numpy(yb))
    blob = a.state_bytes()
    b = VNodeRuntime(net, "stem", seed=99)  # other initial weights: the checkpoint must replace them
    b.load_state(blob)
    assert (b.step, b.last_batch) == (5, 4)
    assert b.digest() == a.digest()
    xb, yb = data.batch(5, 32, 3)
    out_a, loss_a = a.train_step(5, [torch.from_numpy(xb)], torch.from_numpy(yb)) or (None, None)
    out_b, loss_b = b.train_step(5, [torch.from_numpy(xb)], torch.from_numpy(yb)) or (None, None)
    assert loss_a == loss_b and torch.equal(out_a, out_b)


def test_a_late_or_duplicated_batch_is_never_counted_twice(digits: tuple[np.ndarray, np.ndarray]) -> None:
    net = load_spec_text(SPEC)
    data = load_dataset(dataset_bytes(*digits), net.input_shape, net.classes)
    rt = VNodeRuntime(net, "stem", seed=0)
    xb, yb = (torch.from_numpy(a) for a in data.batch(7, 32, 0))
    assert rt.train_step(7, [xb], yb) is not None
    before = rt.digest()
    assert rt.train_step(7, [xb], yb) is None
    assert rt.train_step(3, [xb], yb) is None
    assert rt.step == 1 and rt.digest() == before


def test_checkpoint_of_another_vnode_or_garbage_is_refused() -> None:
    net = load_spec_text(SPEC)
    blob = VNodeRuntime(net, "stem", seed=0).state_bytes()
    with pytest.raises(InvalidInput):
        VNodeRuntime(net, "mid", seed=0).load_state(blob)
    with pytest.raises(InvalidInput):
        VNodeRuntime(net, "stem", seed=0).load_state(b"\x00" * 40)


def test_dataset_that_does_not_fit_the_first_vnode_is_refused(digits: tuple[np.ndarray, np.ndarray]) -> None:
    net = load_spec_text(SPEC)
    x, y = digits
    with pytest.raises(InvalidInput) as info:
        load_dataset(dataset_bytes(x[:, :32], y), net.input_shape, net.classes)
    assert info.value.field == "dataset.x"
    with pytest.raises(InvalidInput) as info:
        load_dataset(dataset_bytes(x, y + 5), net.input_shape, net.classes)
    assert info.value.field == "dataset.y"
    with pytest.raises(InvalidInput):
        load_dataset(b"PK\x03\x04 not really a zip", net.input_shape, net.classes)
