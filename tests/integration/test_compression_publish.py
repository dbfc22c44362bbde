"""`edgehub publish --train ... --recipe ...`: training passes and chains through the real CLI,
registered with lineage and shown by `edgehub zoo show`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgehub.hub.cli import cli

SOURCE = "edgehub.hub.examples.nets:resnet_small"

RECIPE = """
replace_defaults = true

[[chain]]
steps = [
  { pass = "structured_prune", label = "pruned", config = { target_ratio = 0.5, epochs = 1 } },
  { pass = "distill", label = "pruned-kd", config = { student = "parent", epochs = 1 } },
  { pass = "int8_static", label = "pruned-kd-int8" },
]

[[chain]]
steps = [{ pass = "sensitivity_prune", label = "sparse", config = { target_sparsity = 0.4, ratios = [0.5] } }]

[[chain]]
steps = [
  { pass = "depthwise_separable", label = "separable", config = { min_in_channels = 1000 } },
  { pass = "int8_static", label = "separable-int8" },
]
"""


def run_cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A briefly trained ResNetSmall, a 400-image training set and a 300-image eval set."""
    import torch

    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import resnet_small
    from edgehub.hub.examples.training import train_classifier

    out = tmp_path_factory.mktemp("compression-publish")
    x, y = load_fashion_mnist("train", limit=400)
    xe, ye = load_fashion_mnist("test", limit=300)
    torch.manual_seed(0)
    model = resnet_small()
    train_classifier(model, x, y, epochs=1, batch_size=64, progress=False)
    torch.save(model.state_dict(), out / "w.pt")
    np.savez(out / "train.npz", x=x, y=y)
    np.savez(out / "train-nolabels.npz", x=x)
    np.savez(out / "eval.npz", x=xe, y=ye)
    xu, _ = load_fashion_mnist("train", limit=700)
    # 300 images the training set does not hold; a stray 'y' (of the wrong length, even) is dropped.
    np.savez(out / "unlabeled.npz", x=xu[400:], y=np.zeros(5, np.int64))
    np.savez(out / "unlabeled-small.npz", x=xu[400:, :, :14, :14])
    (out / "chains.toml").write_text(RECIPE)
    (out / "kd.toml").write_text('replace_defaults = true\n[[chain]]\n'
                                 'steps = [{ pass = "distill", label = "kd", config = { epochs = 1 } }]\n')
    return out


def test_recipe_chain_is_registered_with_lineage(data, hub_home):
    code, out, err = run_cli("publish", SOURCE, "--weights", str(data / "w.pt"), "--name", "chain",
                             "--eval", str(data / "eval.npz"), "--train", str(data / "train.npz"),
                             "--recipe", str(data / "chains.toml"), "--json")
    assert code == 0, err
    result = json.loads(out)
    variants = {v["label"]: v for v in result["variants"]}
    assert set(variants) == {"fp32", "pruned", "pruned-kd", "pruned-kd-int8", "sparse"}
    ids = {label: v["id"] for label, v in variants.items()}
    assert variants["pruned"]["parent"] == ids["fp32"]
    assert variants["pruned-kd"]["parent"] == ids["pruned"]
    assert variants["pruned-kd-int8"]["parent"] == ids["pruned-kd"]
    chain = variants["pruned-kd-int8"]
    assert [s["pass"] for s in chain["recipe"]] == ["export", "slim", "structured_prune", "distill", "int8_static"]
    assert chain["precision"] == "int8" and chain["size_bytes"] < 0.3 * variants["fp32"]["size_bytes"]
    assert chain["recipe"][2]["notes"]["macs_ratio"] <= 0.5
    assert chain["metrics"]["accuracy"] is not None
    # The not-applicable step and its child are reported, not fatal.
    skipped = {s["variant"]: s["reason"] for s in result["skipped"]}
    assert "no standard k x k convolution" in skipped["separable"]
    assert "separable" in skipped["separable-int8"]

    code, shown, _ = run_cli("zoo", "show", "chain")
    assert code == 0
    # The tree nests each step under its parent, and the sensitivity table is drawn.
    lines = shown.splitlines()
    depth = {label: next(i for i, line in enumerate(lines) if f" {label} (" in line) for label in
             ("pruned", "pruned-kd", "pruned-kd-int8")}
    assert depth["pruned"] < depth["pruned-kd"] < depth["pruned-kd-int8"]
    indent = {label: lines[i].index(label) for label, i in depth.items()}
    assert indent["pruned"] < indent["pruned-kd"] < indent["pruned-kd-int8"]
    flat = " ".join(shown.split())  # rich wraps long lines at the test console's width
    assert "MACs" in flat and "params 0." in flat and "pruning sensitivity" in flat, shown
    assert "/layer1/layer1.0/conv1/Conv" in flat  # layers named by their ONNX nodes


def test_train_alone_adds_the_training_defaults(data, hub_home):
    code, out, err = run_cli("publish", SOURCE, "--weights", str(data / "w.pt"), "--name", "defaults",
                             "--eval", str(data / "eval.npz"), "--train", str(data / "train.npz"), "--json")
    assert code == 0, err
    variants = {v["label"]: v for v in json.loads(out)["variants"]}
    assert {"fp32", "fp16", "int8-static", "pruned", "pruned-int8", "distilled",
            "distilled-int8"} == set(variants) - {"int8-guarded"}  # no dynamic int8 for a CNN
    assert variants["distilled"]["recipe"][-1]["notes"]["params_ratio_to_teacher"] <= 0.3
    assert variants["distilled-int8"]["parent"] == variants["distilled"]["id"]


def test_onnx_source_with_train_says_it_needs_pytorch(data, fmnist_cnn, hub_home):
    code, _, err = run_cli("publish", str(fmnist_cnn["onnx"]), "--name", "onnx-only", "--eval",
                           str(fmnist_cnn["eval"]), "--train", str(data / "train.npz"))
    assert code == 1 and "ONNX only" in err and "package.module:factory" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run_cli("zoo", "list", "--json")
    assert json.loads(out)["models"] == []  # nothing registered


def test_training_set_without_labels_is_refused(data, hub_home):
    code, _, err = run_cli("publish", SOURCE, "--weights", str(data / "w.pt"), "--name", "nolabels",
                           "--eval", str(data / "eval.npz"), "--train", str(data / "train-nolabels.npz"))
    assert code == 1 and "labels" in err


def test_unlabeled_transfer_set_joins_distillation(data, hub_home):
    common = ("publish", SOURCE, "--weights", str(data / "w.pt"), "--eval", str(data / "eval.npz"),
              "--recipe", str(data / "kd.toml"))
    # Without --train, and with images of another size: one line each, nothing registered.
    code, _, err = run_cli(*common, "--name", "kd-u", "--unlabeled", str(data / "unlabeled.npz"))
    assert code == 1 and "--train" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(*common, "--name", "kd-u", "--train", str(data / "train.npz"),
                           "--unlabeled", str(data / "unlabeled-small.npz"))
    assert code == 1 and "unlabeled-small.npz" in err and "shape" in err and len(err.strip().splitlines()) == 1, err
    assert json.loads(run_cli("zoo", "list", "--json")[1])["models"] == []

    code, out, err = run_cli(*common, "--name", "kd-u", "--train", str(data / "train.npz"),
                             "--unlabeled", str(data / "unlabeled.npz"), "--json")
    assert code == 0, err
    kd = next(v for v in json.loads(out)["variants"] if v["label"] == "kd")
    training = kd["recipe"][-1]["notes"]["training"]
    assert training["unlabeled_samples"] == 300 and training["samples"] == 360  # 40 held out for validation


def test_recipe_with_training_passes_needs_train(data, hub_home):
    code, _, err = run_cli("publish", SOURCE, "--weights", str(data / "w.pt"), "--name", "notrain",
                           "--eval", str(data / "eval.npz"), "--recipe", str(data / "chains.toml"))
    assert code == 1 and "--train" in err and "structured_prune" in err


def test_bad_recipe_file_is_one_line(data, hub_home, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[chain]]\nsteps = [{ pass = "shrink" }]\n')
    code, _, err = run_cli("publish", SOURCE, "--name", "bad", "--eval", str(data / "eval.npz"),
                           "--recipe", str(bad))
    assert code == 1 and "unknown pass 'shrink'" in err and len(err.strip().splitlines()) == 1


def test_guard_table_names_the_layers_kept_float():
    from rich.console import Console

    from edgehub.hub.cli.variant_views import lineage_tree, sensitivity_tables
    from edgehub.protocol.manifest import TensorSpec
    from edgehub.zoo.records import VariantRecord

    guard = {"max_drop": 0.003, "unit": "accuracy", "int8_drop": 0.65, "final_drop": 0.001,
             "sensitivity": {"/layer1/conv2/Conv": 0.6, "/stem/Conv": 0.0, "/fc/Gemm": 0.001},
             "kept_float": ["/layer1/conv2/Conv"], "within_budget": True, "size_ratio_to_int8": 1.25}
    spec = [TensorSpec(name="x", dtype="float32", shape=["batch", 4])]
    variant = VariantRecord(id="m-v1-g", model="m", version=1, label="g", profiles=[], format="onnx",
                            precision="mixed", size_bytes=10, sha256="0" * 64, inputs=spec, outputs=spec,
                            recipe=[{"pass": "int8_guarded", "config": {}, "notes": {"guard": guard}}])
    console = Console(width=200, record=True)
    for table in sensitivity_tables([variant]):
        console.print(table)
    console.print(lineage_tree("m", 1, [variant]))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "/layer1/conv2/Conv" in line and "+0.600000" in line)
    assert "yes" in row
    assert "all int8: accuracy drop 0.6500" in text and "budget 0.0030, met" in text and "1.25x" in text
    assert "kept float: /layer1/conv2/Conv" in text
