"""Static int8 (QDQ) quantization of an fp32 ONNX model with Microsoft Olive's OnnxStaticQuantization pass.

Tested with olive-ai 0.13.0 + onnxruntime 1.32 (CPU only, no network).
"""
import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import numpy

# Generated user script: registers an Olive load_dataset component that reads the calibration .npz.
# Each item is ({input_name: one sample}, dummy_label); Olive's default dataloader (torch DataLoader,
# batch_size=1 by default) collates it and Olive's default_calibration_dataloader wraps it into an
# onnxruntime CalibrationDataReader.
_USER_SCRIPT = textwrap.dedent(
    '''
    import numpy as np
    from olive.data.registry import Registry


    class _NpzDataset:
        def __init__(self, npz_path):
            with np.load(npz_path) as f:
                self.arrays = {k: np.ascontiguousarray(f[k]) for k in f.files}
            self.n = len(next(iter(self.arrays.values())))

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.arrays.items()}, 0


    @Registry.register_dataset("__DATASET_NAME__")
    def olive_int8_npz_dataset(npz_path):
        return _NpzDataset(npz_path)
    '''
)


def olive_static_int8(onnx_path: str, calibration: dict, out_dir: str, verbose: bool = False) -> str:
    """Quantize an fp32 ONNX model to static int8 (QDQ) with Olive's OnnxStaticQuantization pass (its defaults),
    calibrated on the given in-memory arrays (first axis = samples, keys = model input names).
    Return the path of the quantized .onnx file."""
    from olive.workflows import run as olive_run

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = {len(v) for v in calibration.values()}
    assert len(n) == 1, f"all calibration arrays need the same number of samples, got {n}"

    # Olive caches pass results keyed on the config (which holds only the .npz *path*, not its contents), so a
    # rerun into the same out_dir would silently return the old model: always start from an empty cache/output.
    for d in ("olive_cache", "olive_output"):
        shutil.rmtree(out / d, ignore_errors=True)

    npz_path = out / "calibration.npz"
    numpy.savez(npz_path, **{k: numpy.asarray(v) for k, v in calibration.items()})
    script_path = out / "olive_calib_user_script.py"
    # unique component name per out_dir: Olive logs a CRITICAL "Duplicate component registration" otherwise
    dataset_name = "olive_int8_npz_" + hashlib.sha1(str(out).encode()).hexdigest()[:10]
    script_path.write_text(_USER_SCRIPT.replace("__DATASET_NAME__", dataset_name))

    config = {
        "input_model": {"type": "ONNXModel", "model_path": str(Path(onnx_path).resolve())},
        # Explicit local CPU target so nothing depends on which EPs are installed (CPU only).
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [
            {
                "name": "calib_data",
                "user_script": str(script_path),
                "load_dataset_config": {"type": dataset_name, "params": {"npz_path": str(npz_path)}},
                # dataloader: Olive's default_dataloader with its default batch_size=1 (MinMax ranges do not
                # depend on batch size).
            }
        ],
        # Only the data_config is set; every other option is the pass default (int8 weights + int8 activations,
        # QDQ, MinMax, per_channel=False, reduce_range=False, quant_preprocess=True, prepare_qdq_config=True).
        "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calib_data"}},
        # No evaluator: we only want the quantized model.
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(out / "olive_cache"),
        "output_dir": str(out / "olive_output"),
        "clean_cache": True,
        "evaluate_input_model": False,
        "log_severity_level": 0 if verbose else 1,
    }
    (out / "olive_config.json").write_text(json.dumps(config, indent=2))

    workflow_output = olive_run(config)
    best = workflow_output.get_best_candidate() if workflow_output is not None else None
    if best is None or not best.model_path:
        raise RuntimeError(f"Olive produced no output model; see logs in {out}")
    model_path = Path(best.model_path)
    if model_path.is_dir():  # Olive may report the folder that holds model.onnx
        candidates = sorted(model_path.glob("*.onnx"))
        assert len(candidates) == 1, candidates
        model_path = candidates[0]
    return str(model_path)
