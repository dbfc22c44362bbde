"""Core ML packages built from a CNN trained on real data, validated from their spec (prediction
needs macOS), stored as deterministic zips; and the agent's Core ML runtime off macOS."""

from __future__ import annotations

import hashlib
import sys
import zipfile

import pytest
from digits_models import shared_digits

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import RuntimeUnavailable, runtime_for
from edgehub.agent.runtimes.coreml_rt import CoreMLRuntime
from edgehub.converters.coreml import inspect_mlpackage
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import NotApplicable, PassContext, run_pass
from edgehub.protocol.coreml_package import PackageError, extract_mlpackage
from edgehub.protocol.messages import BenchmarkSettings


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("coreml")
    shared = shared_digits()
    root = shared["root"]
    ctx = PassContext(workdir=work / "passes", calibration={"x": shared["x"][:16]})
    fp16 = run_pass("coreml", root, {}, ctx)
    built = {"fp16": fp16, "root": root, "ctx": ctx}
    for weights in ("int8", "palettize-4bit", "palettize-2bit"):
        built[weights] = run_pass("coreml_compress", fp16, {"weights": weights}, ctx)
    return built


def test_fp16_package_spec(packages):
    fp16 = packages["fp16"]
    assert (fp16.format, fp16.precision) == ("coreml", "fp16") and fp16.path.name.endswith(".mlpackage.zip")
    summary = inspect_mlpackage(fp16.path)
    assert summary.model_type == "mlProgram"
    assert [(s.dtype, s.shape) for s in summary.inputs] == [("float32", [1, 1, 8, 8])]
    assert [(s.name, s.dtype, s.shape) for s in summary.outputs] == [("logits", "float32", [1, 10])]
    assert summary.storage_counts() == {"fp16": 4}  # 2 convs, 2 linears
    assert fp16.notes["compute_precision"] == "fp16" and fp16.notes["minimum_deployment_target"] == "iOS16"


@pytest.mark.parametrize("weights, precision, storage", [
    ("int8", "int8", "int8"), ("palettize-4bit", "int4", "palette-4bit"), ("palettize-2bit", "int2", "palette-2bit"),
])
def test_compressed_packages_store_the_big_weights_compressed(packages, weights, precision, storage):
    variant = packages[weights]
    assert variant.precision == precision
    summary = inspect_mlpackage(variant.path)
    counts = summary.storage_counts()
    # The 16x32x3x3 conv and the 512x64 linear are above the 2048-element threshold; the first
    # conv (144) and the classifier (640) stay fp16.
    assert counts == {"fp16": 2, storage: 2}, counts
    assert summary.compressed_fraction() > 0.9
    assert summary.inputs == inspect_mlpackage(packages["fp16"].path).inputs
    assert variant.size_bytes < packages["fp16"].size_bytes


def test_sizes_shrink_with_the_bits(packages):
    sizes = [packages[k].size_bytes for k in ("fp16", "int8", "palettize-4bit", "palettize-2bit")]
    assert sizes == sorted(sizes, reverse=True) and sizes[3] < sizes[0] / 3


def test_packages_are_deterministic_zips(packages, tmp_path):
    ctx = PassContext(workdir=tmp_path, calibration=packages["ctx"].calibration)
    again = run_pass("coreml", packages["root"], {}, ctx)
    assert _sha(again.path) == _sha(packages["fp16"].path)
    palettized = run_pass("coreml_compress", again, {"weights": "palettize-4bit"}, ctx)
    assert _sha(palettized.path) == _sha(packages["palettize-4bit"].path)
    with zipfile.ZipFile(again.path) as archive:
        names = archive.namelist()
        assert names == sorted(names) and all(n.startswith("model.mlpackage/") for n in names)
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_onnx_only_model_gets_a_clear_message(packages, tmp_path):
    onnx_only = packages["root"].model_copy(update={"torch_model": None})
    with pytest.raises(NotApplicable, match="Core ML conversion needs a PyTorch source"):
        run_pass("coreml", onnx_only, {}, PassContext(workdir=tmp_path, calibration=packages["ctx"].calibration))


def test_compress_needs_the_fp16_package(packages, tmp_path):
    with pytest.raises(ConversionError, match="needs the fp16 package"):
        run_pass("coreml_compress", packages["int8"], {"weights": "palettize-4bit"}, PassContext(workdir=tmp_path))


@pytest.mark.parametrize("entry, problem", [("../evil.txt", "unexpected entry"), ("other/x", "unexpected entry"),
                                            ("/abs/path", "unexpected entry")])
def test_hostile_zips_are_refused(tmp_path, entry, problem):
    bad = tmp_path / "bad.mlpackage.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("model.mlpackage/Manifest.json", "{}")
        archive.writestr(entry, "x")
    with pytest.raises(PackageError, match=problem):
        extract_mlpackage(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_and_non_zip_are_refused(tmp_path):
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("model.mlpackage/weights")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(PackageError, match="symbolic link"):
        extract_mlpackage(link, tmp_path / "out")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a zip"):
        extract_mlpackage(junk, tmp_path / "out")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_agent_off_macos_reports_the_candidate_as_not_runnable(packages):
    assert not CoreMLRuntime().available()
    with pytest.raises(RuntimeUnavailable, match="only on macOS"):
        CoreMLRuntime().version()
    with pytest.raises(RuntimeUnavailable, match="runs coreml models"):
        runtime_for("coreml")
    result = run_benchmark(packages["fp16"].path, "coreml", None, BenchmarkSettings(time_budget_s=0.2, min_runs=5))
    assert not result.ok and "no runtime on this device runs coreml models" in result.error
