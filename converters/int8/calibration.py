"""Calibration ranges for static quantization, computed once and reused across schemes.

onnxruntime's quantize_static builds its entropy/percentile calibrators with 128 histogram
bins and no way to change that, which makes them equal MinMax. We build the calibrator
ourselves with proper bin counts and hand the ranges to quantize_static as a calibration cache.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from edgehub.converters.errors import ConversionError

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]


class ArrayReader:
    """onnxruntime CalibrationDataReader over in-memory arrays, one sample batch at a time."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int = 16):
        self._data = data
        n = len(next(iter(data.values())))
        # Histogram calibrators stack batches, so every batch must have the same size: the
        # remainder is dropped.
        self._batch = min(batch_size, n)
        self._n = n - n % self._batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self._n, self._batch):
            yield {k: v[start : start + self._batch] for k, v in self._data.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None

    def __len__(self) -> int:
        return self._n // self._batch


class OneBatch:
    """A CalibrationDataReader of one batch."""

    def __init__(self, batch: dict[str, np.ndarray]):
        self._batch: dict[str, np.ndarray] | None = batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch, self._batch = self._batch, None
        return batch


def ort_method(name: CalibrationMethodName):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def compute_ranges(
    model_path: Path,
    data: dict[str, np.ndarray],
    method: CalibrationMethodName,
    out_path: Path,
    *,
    symmetric: bool = False,
    num_bins: int = 2048,
    percentile: float = 99.999,
    op_types: list[str] | None = None,
) -> Path:
    """Run calibration and write the tensor ranges where quantize_static reads its cache."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    extra: dict = {"symmetric": symmetric}
    if method in ("entropy", "percentile"):
        extra.update(num_bins=num_bins, num_quantized_bins=128, percentile=percentile)
    augmented = out_path.with_suffix(".augmented.onnx")
    calibrator = create_calibrator(
        str(model_path),
        op_types_to_calibrate=op_types,
        augmented_model_path=str(augmented),
        calibrate_method=ort_method(method),
        extra_options=extra,
    )
    # The histogram calibrators print progress with print(); keep stdout clean for --json.
    # One batch per collect_data call: ONNX Runtime's calibrators keep every intermediate tensor of
    # the batches they are given until the call ends (256 EfficientNet-Lite1 crops: > 20 GB, the
    # process was killed); histograms and ranges merge across calls.
    reader = ArrayReader(data)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            while (batch := reader.get_next()) is not None:
                calibrator.collect_data(OneBatch(batch))
            ranges = calibrator.compute_data()
    except ValueError as exc:
        # e.g. histogram calibration over attention masks that hold -inf
        raise ConversionError(f"{method} calibration failed ({exc}); try calibrate_method 'minmax' "
                              "or restrict op_types_to_quantize") from None
    save_tensors_data(ranges, out_path)
    del calibrator
    augmented.unlink(missing_ok=True)
    return out_path
