"""An older board's stack on aarch64: tflite-runtime 2.14 (numpy < 2, no ai-edge-litert, no ONNX
Runtime; the second venv of deploy/arm64/rootfs.sh), under qemu user-mode emulation.

The agent falls back to tflite-runtime for .tflite variants there. It computes the fp32 and full
int8 files of the digits CNN as LiteRT does on x86, but the dynamic-range int8 file wrongly
(measured: top-1 agreement 0.16, cosine 0.16 with x86 LiteRT's outputs). The agent's benchmark
child and its activation health check, run inside that venv, must pass the first two and refuse
the third on its outputs, so such a variant is never selected or served. Marked slow.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from arm64_chroot import TFLITE_PYTHON, command, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable(TFLITE_PYTHON) is not None,
                                                   reason=unavailable(TFLITE_PYTHON) or "")]

ON_DEVICE = """
import json, sys
from pathlib import Path
from edgehub.agent.activation import health_check
from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.local_state import InstalledVariant
from edgehub.protocol.messages import BenchmarkSettings
work, out = Path(sys.argv[1]), {}
for label in ("fp32", "int8", "dynamic-int8"):
    model, refs = work / f"{label}.tflite", work / f"{label}.refs.npz"
    r = run_benchmark(model, "tflite", refs, BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1))
    variant = InstalledVariant.model_construct(variant_id=label, path=model, format="tflite", references_path=refs)
    out[label] = {"ok": r.ok, "error": r.error, "runtime": r.runtime, "version": r.runtime_version,
                  "agreement": r.agreement, "cosine": r.cosine, "health": health_check(variant)}
import numpy
out["numpy"] = numpy.__version__
print(json.dumps(out))
"""


def test_tflite_runtime_on_arm64_passes_good_files_and_is_caught_on_the_one_it_computes_wrongly(tmp_path):
    from digits_models import shared_digits

    from edgehub.agent.runtimes import runtime_for

    shared = shared_digits()
    x = shared["x"][1400:1432]
    for label, key in (("fp32", "none"), ("int8", "int8"), ("dynamic-int8", "dynamic_int8")):
        artifact = shared["tflite"][key]
        # References as the hub computes them at publish: LiteRT on x86, the same file.
        session = runtime_for("tflite").load(artifact.path, threads=1)
        name = session.inputs[0].name
        outputs = np.concatenate([session.run({name: x[i:i + 1]})[0] for i in range(len(x))])
        (tmp_path / f"{label}.tflite").write_bytes(artifact.path.read_bytes())
        np.savez(tmp_path / f"{label}.refs.npz", **{f"input.{name}": x, f"output.{artifact.outputs[0].name}": outputs})
    script = tmp_path / "on_device.py"
    script.write_text(ON_DEVICE)
    done = subprocess.run(command([str(script), str(tmp_path)], tmp_path, python=TFLITE_PYTHON),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["numpy"].startswith("1.")  # the old stack, not the main venv
    for label in ("fp32", "int8"):
        report = found[label]
        assert report["ok"] and report["runtime"] == "tflite-runtime" and report["version"] == "2.14.0", report
        assert report["agreement"] >= 0.99 and report["health"] is None, report
    wrong = found["dynamic-int8"]
    assert wrong["ok"] and wrong["runtime"] == "tflite-runtime", wrong  # it loads and runs: only the numbers are wrong
    assert wrong["agreement"] < 0.5 and wrong["cosine"] < 0.9, wrong
    assert wrong["health"].startswith("outputs disagree with the reference"), wrong
