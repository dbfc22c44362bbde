"""Bad input to `edgehub publish`: one clear line, non-zero exit, registry and store untouched."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from db_counts import home_contents

from edgehub.hub.cli import cli
from edgehub.hub.home import HubPaths
from edgehub.zoo.registry import Registry


@pytest.fixture
def seeded_home(tiny_mlp, hub_home):
    """A home that already holds one published model, so 'unchanged' means something."""
    result = CliRunner().invoke(cli, ["publish", str(tiny_mlp["onnx"]), "--name", "digits", "--eval", str(tiny_mlp["eval"])])
    assert result.exit_code == 0, result.output
    return hub_home


def state(home):
    keys_dir = HubPaths.from_home(home).keys_dir
    keys = sorted(p.name for p in keys_dir.iterdir()) if keys_dir.exists() else []
    return home_contents(home), keys


def publish_fails(home, *args) -> str:
    before = state(home)
    result = CliRunner().invoke(cli, ["publish", *args])
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    message = result.stderr.strip().splitlines()[-1]  # progress bars may precede it
    assert message.startswith("error:") and "Traceback" not in result.output
    assert state(home) == before, "a failed publish changed the registry or the store"
    return message


def test_corrupt_onnx(seeded_home, tmp_path, tiny_mlp):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(tiny_mlp["onnx"].read_bytes()[: 500])
    message = publish_fails(seeded_home, str(bad), "--name", "x", "--eval", str(tiny_mlp["eval"]))
    assert "broken.onnx" in message


def test_not_an_onnx_file(seeded_home, tmp_path, tiny_mlp):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am not a model\n")
    assert "notes.onnx" in publish_fails(seeded_home, str(text), "--name", "x", "--eval", str(tiny_mlp["eval"]))


def test_missing_source(seeded_home, tiny_mlp):
    assert "no such file" in publish_fails(seeded_home, "nowhere.onnx", "--name", "x", "--eval", str(tiny_mlp["eval"]))


def test_eval_set_with_wrong_key(seeded_home, tmp_path, tiny_mlp):
    np.savez(tmp_path / "e.npz", images=tiny_mlp["x"])
    message = publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tmp_path / "e.npz"))
    assert "missing key" in message and "images" in message


def test_eval_set_with_wrong_shape(seeded_home, tmp_path, tiny_mlp):
    np.savez(tmp_path / "e.npz", x=tiny_mlp["x"][:, :32])
    message = publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tmp_path / "e.npz"))
    assert "shape" in message and "64" in message


def test_eval_set_with_bad_labels(seeded_home, tmp_path, tiny_mlp):
    np.savez(tmp_path / "e.npz", x=tiny_mlp["x"], y=tiny_mlp["y"][:10])
    assert "'y'" in publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tmp_path / "e.npz"))


def test_eval_set_not_an_npz(seeded_home, tmp_path, tiny_mlp):
    (tmp_path / "e.npz").write_bytes(b"PK\x03\x04 nope")
    assert "e.npz" in publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tmp_path / "e.npz"))


def test_unknown_profile(seeded_home, tiny_mlp):
    message = publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "x", "--eval", str(tiny_mlp["eval"]),
                            "--profile", "toaster")
    assert "toaster" in message and "x86-cpu" in message


def test_name_clash_with_different_content(seeded_home, fmnist_cnn):
    message = publish_fails(seeded_home, str(fmnist_cnn["onnx"]), "--name", "digits", "--eval", str(fmnist_cnn["eval"]))
    assert "digits" in message and "different content" in message


def test_invalid_name(seeded_home, tiny_mlp):
    assert "invalid model name" in publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "Bad Name!",
                                                 "--eval", str(tiny_mlp["eval"]))


def test_bad_torch_factory(seeded_home, tiny_mlp):
    assert "cannot import" in publish_fails(seeded_home, "no_such_pkg.nets:model", "--name", "x",
                                            "--eval", str(tiny_mlp["eval"]))


def test_weights_that_do_not_fit(seeded_home, tmp_path, fmnist_cnn):
    import torch

    torch.save({"weight": torch.zeros(3)}, tmp_path / "w.pt")
    message = publish_fails(seeded_home, "edgehub.hub.examples.nets:small_cnn", "--weights", str(tmp_path / "w.pt"),
                            "--name", "x", "--eval", str(fmnist_cnn["eval"]))
    assert "w.pt" in message


def test_failure_during_commit_rolls_back_store(seeded_home, tiny_mlp, monkeypatch):
    """A registry failure at commit time removes the objects the publish wrote."""
    from edgehub.zoo.registry import RegistryError

    def boom(self, version, variants):
        raise RegistryError("database is on fire")

    monkeypatch.setattr(Registry, "register", boom)
    message = publish_fails(seeded_home, str(tiny_mlp["onnx"]), "--name", "other", "--eval", str(tiny_mlp["eval"]),
                            "--new-version")
    assert "on fire" in message
