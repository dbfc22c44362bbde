"""Fashion-MNIST loader (numpy only).

The data comes from the Debian package ``dataset-fashion-mnist``, which installs the four
original gzip'd IDX files under ``/usr/share/datasets/fashion-mnist``. Set the environment
variable ``EDGEHUB_FMNIST_DIR`` to read them from somewhere else.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["CLASSES", "DATA_DIR", "ENV_VAR", "MEAN", "STD", "default_data_dir", "load_fashion_mnist", "read_idx"]

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "EDGEHUB_FMNIST_DIR"

# Mean and standard deviation of the training pixels after scaling to [0, 1].
MEAN = 0.2860
STD = 0.3530

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_data_dir() -> Path:
    """The directory the files are read from: ``$EDGEHUB_FMNIST_DIR`` if set, else :data:`DATA_DIR`."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DATA_DIR


def read_idx(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """Read a (gzip'd) IDX file into a numpy array; with ``limit`` only the first items are read."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
            raise ValueError(f"{path} is not an IDX file (magic {magic!r})")
        dtype = np.dtype(_IDX_DTYPES[magic[2]])
        ndim = magic[3]
        shape = [int(d) for d in np.frombuffer(f.read(4 * ndim), dtype=">i4")]
        if limit is not None:
            shape[0] = min(shape[0], max(int(limit), 0))
        count = int(np.prod(shape))
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: expected {count} items of shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(
    split: Literal["train", "test"],
    limit: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split.

    Returns ``(x, y)``: ``x`` float32 of shape ``(N, 1, 28, 28)``, scaled to [0, 1] then
    normalised with ``(x - MEAN) / STD``; ``y`` int64 of shape ``(N,)`` with values in 0..9
    (see :data:`CLASSES`). ``limit`` keeps the first ``limit`` samples (only those are
    decompressed). ``data_dir`` overrides ``$EDGEHUB_FMNIST_DIR`` and :data:`DATA_DIR`.

    Raises :class:`FileNotFoundError` if the files are not there.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = [root / name for name in _FILES[split]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(str(p) for p in missing)}. "
            f"Install them with `apt-get install dataset-fashion-mnist` "
            f"(or point ${ENV_VAR} at a directory holding the four *-ubyte.gz files)."
        )
    images = read_idx(paths[0], limit)
    labels = read_idx(paths[1], limit)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    x = images.astype(np.float32)[:, None, :, :]
    x *= np.float32(1.0 / 255.0)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    return x, labels.astype(np.int64)
