"""`edgehub publish` end to end on a CNN trained on Fashion-MNIST, through the real CLI."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgehub.hub.cli import cli
from edgehub.hub.home import HubPaths
from edgehub.protocol.files import sha256_file
from edgehub.protocol.manifest import SignedManifest, verify_manifest
from edgehub.zoo.store import ArtifactStore


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def published(fmnist_cnn, tmp_path_factory):
    """The CNN published once for the module; tests read the same home."""
    home = tmp_path_factory.mktemp("published-home")
    result = CliRunner().invoke(cli, ["publish", str(fmnist_cnn["onnx"]), "--name", "fmnist-cnn",
                                      "--eval", str(fmnist_cnn["eval"]), "--profile", "x86-cpu",
                                      "--json", "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home, json.loads(result.stdout)


def by_label(data):
    return {v["label"]: v for v in data["variants"]}


def test_publish_builds_the_x86_variants(published):
    _, data = published
    variants = by_label(data)
    skipped = {s["variant"]: s["reason"] for s in data["skipped"]}
    assert {"fp32", "fp16", "int8-static"} <= set(variants)
    # Dynamic int8 only where convolutions are not most of the weights (this CNN's classifier is).
    assert "int8-dynamic" in variants or "convolutions" in skipped["int8-dynamic"]
    # The guarded int8 is built only where the plain one misses the gate's budget.
    assert ("int8-guarded" in variants) != ("within the budget" in skipped.get("int8-guarded", ""))
    for v in data["variants"]:
        for key in ("id", "parent", "recipe", "format", "precision", "size_bytes", "sha256", "metrics"):
            assert key in v
        assert v["format"] == "onnx" and v["precision"] in ("fp32", "fp16", "int8", "mixed")
        assert "agreement" in v["metrics"] and v["metrics"]["accuracy"] is not None
    assert variants["fp32"]["parent"] is None
    assert all(v["parent"] == variants["fp32"]["id"] for k, v in variants.items() if k != "fp32")


def test_int8_is_small_and_accurate(published):
    variants = by_label(published[1])
    fp32, int8 = variants["fp32"], variants["int8-static"]
    assert int8["size_bytes"] <= 0.3 * fp32["size_bytes"]
    assert int8["metrics"]["accuracy"] >= fp32["metrics"]["accuracy"] - 0.01
    assert fp32["metrics"]["accuracy"] > 0.75  # the model really learned Fashion-MNIST


def test_int8_recipe_records_the_kernel_scheme(published):
    step = by_label(published[1])["int8-static"]["recipe"][-1]
    assert step["pass"] == "int8_static"
    assert step["notes"]["scheme"] in ("u8s8", "reduce_range", "u8u8")
    assert set(step["notes"]["scheme_scores"]) == {"u8s8", "reduce_range", "u8u8"}
    assert step["notes"]["calibrate_method"] in ("minmax", "percentile", "entropy")
    assert {t["method"] for t in step["notes"]["trials"]} == {"minmax", "percentile", "entropy"}
    assert step["config"]["per_channel"] is True


def test_artifacts_are_stored_signed_and_have_references(published):
    home, data = published
    paths = HubPaths.from_home(home)
    store = ArtifactStore(paths.artifacts_dir)
    public = base64.b64decode((paths.keys_dir / "hub_ed25519.pub").read_text().strip())
    for v in data["variants"]:
        assert sha256_file(store.path_for(v["sha256"])) == v["sha256"]
        assert store.size(v["sha256"]) == v["size_bytes"]
        manifest = verify_manifest(SignedManifest.model_validate(v["manifest"]), public)
        assert manifest.sha256 == v["sha256"] and manifest.variant_id == v["id"]
        refs = np.load(io.BytesIO(store.path_for(v["references_sha256"]).read_bytes()))
        assert refs["input.x"].shape[0] == refs["output.logits"].shape[0] > 0


def test_references_match_running_the_stored_variant(published):
    from edgehub.hub.publish.evaluate import run_onnx

    home, data = published
    store = ArtifactStore(HubPaths.from_home(home).artifacts_dir)
    v = by_label(data)["int8-static"]
    refs = np.load(io.BytesIO(store.path_for(v["references_sha256"]).read_bytes()))
    out = run_onnx(store.path_for(v["sha256"]), {"x": refs["input.x"]})[0]
    np.testing.assert_allclose(out, refs["output.logits"], atol=1e-4)


def test_zoo_show_and_list(published):
    home, data = published
    code, out, _ = run_cli("zoo", "show", "fmnist-cnn", "--json", "--home", str(home))
    assert code == 0
    shown = json.loads(out)
    assert [v["id"] for v in shown["variants"]] == [v["id"] for v in data["variants"]]
    code, out, _ = run_cli("zoo", "show", "fmnist-cnn", "--home", str(home))
    assert code == 0 and "int8-static" in out and "fp32" in out
    code, out, _ = run_cli("zoo", "list", "--json", "--home", str(home))
    assert json.loads(out)["models"][0]["name"] == "fmnist-cnn"


def test_publishing_the_same_model_again_is_a_no_op(published, fmnist_cnn):
    home, data = published
    code, out, _ = run_cli("publish", str(fmnist_cnn["onnx"]), "--name", "fmnist-cnn",
                           "--eval", str(fmnist_cnn["eval"]), "--json", "--home", str(home))
    again = json.loads(out)
    assert code == 0 and again["already_published"] is True
    assert [v["id"] for v in again["variants"]] == [v["id"] for v in data["variants"]]


def test_no_labels_means_agreement_only(fmnist_cnn, hub_home):
    code, out, _ = run_cli("publish", str(fmnist_cnn["onnx"]), "--name", "nolabels",
                           "--eval", str(fmnist_cnn["eval_nolabels"]), "--json")
    assert code == 0
    for v in json.loads(out)["variants"]:
        assert v["metrics"]["accuracy"] is None and 0.9 <= v["metrics"]["agreement"] <= 1.0


def test_torch_factory_source_with_weights(fmnist_cnn, hub_home):
    code, out, err = run_cli("publish", "edgehub.hub.examples.nets:small_cnn", "--weights", str(fmnist_cnn["weights"]),
                             "--name", "from-torch", "--eval", str(fmnist_cnn["eval"]), "--json")
    assert code == 0, err
    data = json.loads(out)
    fp32 = by_label(data)["fp32"]
    assert fp32["recipe"][0]["pass"] == "export"
    assert fp32["inputs"][0]["shape"][0] == "batch"  # dynamic batch axis
    assert abs(fp32["metrics"]["accuracy"] - fmnist_cnn["torch_accuracy"]) < 0.002


def test_multi_input_transformer(tmp_path, hub_home):
    import torch

    from edgehub.hub.examples.nets import tiny_text_classifier
    from edgehub.hub.examples.training import make_synthetic_text, train_classifier

    ids, mask, y = make_synthetic_text(2000, seed=1)
    torch.manual_seed(0)
    model = tiny_text_classifier()
    train_classifier(model, (ids, mask), y, epochs=2, progress=False)
    torch.save(model.state_dict(), tmp_path / "text.pt")
    ids, mask, _ = make_synthetic_text(300, seed=2)
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    code, out, err = run_cli("publish", "edgehub.hub.examples.nets:tiny_text_classifier",
                             "--weights", str(tmp_path / "text.pt"), "--name", "text",
                             "--eval", str(tmp_path / "text.npz"), "--json")
    assert code == 0, err
    variants = by_label(json.loads(out))
    assert [i["name"] for i in variants["fp32"]["inputs"]] == ["input_ids", "attention_mask"]
    assert variants["fp16"]["metrics"]["agreement"] >= 0.95
    assert variants["int8-dynamic"]["metrics"]["agreement"] >= 0.95
    # Attention graphs get weight-only op types in static int8 (see Int8StaticConfig).
    static = variants["int8-static"]
    assert static["recipe"][-1]["notes"]["op_types"] != "all"
    assert static["metrics"]["agreement"] >= 0.9 and static["metrics"]["cosine"] >= 0.99


def test_new_version_flag(fmnist_cnn, tiny_mlp, hub_home, tmp_path):
    np.savez(tmp_path / "eval.npz", x=tiny_mlp["x"], y=tiny_mlp["y"])
    assert run_cli("publish", str(tiny_mlp["onnx"]), "--name", "m", "--eval", str(tmp_path / "eval.npz"))[0] == 0
    # Same name, different model: refused without --new-version ...
    code, _, err = run_cli("publish", str(fmnist_cnn["onnx"]), "--name", "m", "--eval", str(fmnist_cnn["eval"]))
    assert code == 1 and "--new-version" in err
    # ... and becomes v2 with it.
    code, out, _ = run_cli("publish", str(fmnist_cnn["onnx"]), "--name", "m", "--eval", str(fmnist_cnn["eval"]),
                           "--new-version", "--json")
    assert code == 0 and json.loads(out)["version"] == 2


def test_real_entry_point_runs(fmnist_cnn, hub_home):
    """The installed `edgehub` console script, as a user runs it."""
    edgehub = Path(sys.executable).parent / "edgehub"
    proc = subprocess.run([str(edgehub), "publish", str(fmnist_cnn["onnx"]),
                           "--name", "cli", "--eval", str(fmnist_cnn["eval"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "int8-static" in proc.stdout and "vs fp32" in proc.stdout


def test_publish_pipeline_on_sqlite_and_postgresql(database, tiny_mlp, tmp_path):
    """The same publish code against both databases (the registry URL is all that changes)."""
    from edgehub.hub.publish.pipeline import PublishOptions, publish
    from edgehub.zoo.registry import Registry

    url, connect_args = database
    registry = Registry(url, connect_args=connect_args)
    try:
        outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                          HubPaths.from_home(tmp_path / "home"), registry)
        stored = registry.variants("digits")
        assert [v.id for v in stored] == [v.id for v in outcome.variants]
        assert stored[0].signed_manifest == outcome.variants[0].signed_manifest
        assert registry.list_models()[0].variants == len(outcome.variants) == 4
    finally:
        registry.close()
