"""PyTorch-level passes on tiny Fashion-MNIST models: structured pruning (channels really
removed in the exported ONNX), distillation, depthwise-separable replacement, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import load_onnx
from edgehub.converters.passes.base import NotApplicable, PassContext, TrainingSet, run_pass
from edgehub.converters.passes.torch_compress import reinitialise
from edgehub.hub.publish.evaluate import run_onnx


@pytest.fixture(scope="module")
def fmnist_small():
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("train", limit=700)
    return TrainingSet(inputs={"x": x[:600]}, labels=y[:600], val_inputs={"x": x[600:]}, val_labels=y[600:])


def _source(name, factory, data, tmp_path_factory):
    """A small net trained one epoch, exported with its PyTorch module beside it (as publish does)."""
    import torch

    from edgehub.converters.torch_passes.model_io import export_module
    from edgehub.converters.torch_passes.training import TrainSettings, fit

    torch.manual_seed(0)
    model = factory(width=8)
    fit(model, data, TrainSettings(epochs=1, lr=3e-3, batch_size=64))
    out = tmp_path_factory.mktemp(name)
    return export_module(model, {"x": data.inputs["x"][:2]}, out / f"{name}.onnx", out / f"{name}.pt")


@pytest.fixture(scope="module")
def resnet(fmnist_small, tmp_path_factory):
    from edgehub.hub.examples.nets import resnet_small

    return _source("resnet", resnet_small, fmnist_small, tmp_path_factory)


@pytest.fixture(scope="module")
def mobilenet(fmnist_small, tmp_path_factory):
    from edgehub.hub.examples.nets import mobilenet_small

    return _source("mobilenet", mobilenet_small, fmnist_small, tmp_path_factory)


def ctx_for(source, data, tmp_path, progress=None):
    return PassContext(workdir=tmp_path / "work", training=data, source_model=source.torch_model,
                       on_train_progress=progress.append if progress is not None else (lambda p: None))


def conv_out_channels(path) -> list[int]:
    model = load_onnx(path)
    inits = {i.name: i for i in model.graph.initializer}
    return [inits[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv"]


def test_structured_prune_removes_channels_in_the_exported_onnx(resnet, fmnist_small, tmp_path):
    progress = []
    pruned = run_pass("structured_prune", resnet, {"target_ratio": 0.5, "epochs": 1, "round_to": None},
                      ctx_for(resnet, fmnist_small, tmp_path, progress))
    notes = pruned.notes
    assert notes["macs_ratio"] <= 0.5 and notes["macs_after"] < notes["macs_before"]
    assert notes["channels"], "some layers must have lost channels"
    before, after = conv_out_channels(resnet.path), conv_out_channels(pruned.path)
    assert len(before) == len(after) and sum(after) < 0.8 * sum(before)
    # The residual adds stay consistent: the pruned ONNX runs and gives 10 logits per image.
    out = run_onnx(pruned.path, {"x": fmnist_small.val_inputs["x"]})[0]
    assert out.shape == (100, 10)
    assert pruned.torch_model is not None and pruned.torch_model.is_file()
    assert notes["training"]["epochs"] == 1 and notes["training"]["val_accuracy"] is not None
    # The progress bar gets the running loss and, after the epoch, the validation accuracy.
    assert progress[0].task == "fine-tune" and np.isfinite(progress[0].loss)
    assert progress[-1].val_accuracy is not None


def test_structured_prune_handles_depthwise_and_params_target(mobilenet, fmnist_small, tmp_path):
    pruned = run_pass("structured_prune", mobilenet, {"target_ratio": 0.6, "metric": "params", "epochs": 0,
                                                   "round_to": None},
                      ctx_for(mobilenet, fmnist_small, tmp_path))
    assert pruned.notes["params_ratio"] <= 0.6
    model = load_onnx(pruned.path)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:  # depthwise: one filter per channel, channels consistent
            assert inits[node.input[1]].dims[0] == group and inits[node.input[1]].dims[1] == 1
    assert run_onnx(pruned.path, {"x": fmnist_small.val_inputs["x"][:4]})[0].shape == (4, 10)


def test_distill_into_a_narrow_student(resnet, fmnist_small, tmp_path):
    progress = []
    student = run_pass("distill", resnet, {"params_ratio": 0.3, "epochs": 1, "round_to": None},
                       ctx_for(resnet, fmnist_small, tmp_path, progress))
    notes = student.notes
    assert notes["student"] == "narrow" and notes["params_ratio_to_teacher"] <= 0.3
    assert notes["params"] < 0.3 * notes["narrowing"]["params_before"]
    assert sum(conv_out_channels(student.path)) < 0.6 * sum(conv_out_channels(resnet.path))
    assert notes["teacher_val_accuracy"] is not None and notes["training"]["task"] == "distill"
    assert {p.task for p in progress} == {"distill"} and progress[-1].val_accuracy is not None


def test_narrow_student_can_start_from_random_weights():
    import torch

    from edgehub.converters.passes.torch_compress import DistillConfig, make_student
    from edgehub.hub.examples.nets import ResNetSmall

    torch.manual_seed(0)
    teacher = ResNetSmall(width=8).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    example = (torch.zeros(1, 1, 28, 28),)
    kept, _ = make_student(DistillConfig(params_ratio=0.3, round_to=None), teacher, example)
    fresh, notes = make_student(DistillConfig(params_ratio=0.3, round_to=None, init="random", seed=3),
                                teacher, example)
    again, _ = make_student(DistillConfig(params_ratio=0.3, round_to=None, init="random", seed=3),
                            teacher, example)
    assert notes["init"] == "random"
    kept_state, fresh_state, again_state = kept.state_dict(), fresh.state_dict(), again.state_dict()
    assert {k: v.shape for k, v in kept_state.items()} == {k: v.shape for k, v in fresh_state.items()}
    # Not the teacher's weights; the same seed gives the same start (the label-only baseline needs it).
    assert not torch.equal(kept_state["layer1.0.conv1.weight"], fresh_state["layer1.0.conv1.weight"])
    assert all(torch.equal(fresh_state[k], again_state[k]) for k in fresh_state)
    assert torch.equal(fresh_state["layer1.0.bn1.running_var"], torch.ones_like(fresh_state["layer1.0.bn1.running_var"]))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    with pytest.raises(ConversionError, match="init = 'random' applies to student = 'narrow'"):
        make_student(DistillConfig(student="parent", init="random"), teacher, example)


def test_channel_counts_stay_multiples_of_round_to():
    """Ragged channel counts defeat the CPU's blocked conv kernels (measured: a ResNet pruned to
    0.48x MACs ran 1.03x the fp32 latency with 11/22/45 channels, 0.79x with multiples of 8)."""
    import torch

    from edgehub.converters.torch_passes.channel_pruning import prune_to_ratio
    from edgehub.hub.examples.nets import resnet_small

    model = resnet_small().eval()
    stats = prune_to_ratio(model, (torch.zeros(2, 1, 28, 28),), 0.5, round_to=8)
    assert stats["macs_ratio"] <= 0.5
    assert stats["channels"] and all(after % 8 == 0 for _, after in stats["channels"].values())
    with pytest.raises(ConversionError, match="round_to=8"):
        prune_to_ratio(resnet_small(width=8).eval(), (torch.zeros(2, 1, 28, 28),), 0.5, round_to=8)


def test_distill_with_a_user_student_factory(resnet, fmnist_small, tmp_path):
    student = run_pass("distill", resnet, {"student": "edgehub.hub.examples.nets:small_cnn", "epochs": 1},
                       ctx_for(resnet, fmnist_small, tmp_path))
    assert student.notes["student"] == "edgehub.hub.examples.nets:small_cnn"
    ops = {n.op_type for n in load_onnx(student.path).graph.node}
    assert "MaxPool" in ops  # SmallCNN's architecture, not the teacher's


def test_distillation_loss_blends_soft_and_hard_terms():
    import torch
    import torch.nn.functional as F

    from edgehub.converters.torch_passes.training import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    hard = F.cross_entropy(student, labels)
    assert torch.isclose(distillation_loss(student, teacher, labels, 4.0, 0.0), hard)
    assert distillation_loss(teacher, teacher, labels, 4.0, 1.0).abs() < 1e-6  # student == teacher: no KL
    soft = distillation_loss(student, teacher, labels, 2.0, 1.0)
    expected = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean") * 4
    assert torch.isclose(soft, expected, atol=1e-5)


def test_unlabeled_samples_learn_the_distillation_term_alone():
    import torch

    from edgehub.converters.torch_passes.training import UNLABELED, distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    unlabeled = torch.full((8,), UNLABELED)
    soft_only = distillation_loss(student, teacher, labels, 4.0, 1.0)
    assert torch.isclose(distillation_loss(student, teacher, unlabeled, 4.0, 0.3), soft_only)
    mixed = torch.cat([labels[:4], unlabeled[4:]])
    half = (distillation_loss(student[:4], teacher[:4], labels[:4], 4.0, 0.3)
            + distillation_loss(student[4:], teacher[4:], unlabeled[4:], 4.0, 0.3)) / 2
    assert torch.isclose(distillation_loss(student, teacher, mixed, 4.0, 0.3), half, atol=1e-6)


def test_an_unlabeled_transfer_set_teaches_the_student_the_teachers_outputs(resnet, fmnist_small, tmp_path):
    """With 64 labelled images and 536 unlabeled ones, the student learns the teacher's outputs on
    many more inputs than with the 64 alone: it agrees with the teacher more on held-out images."""
    from edgehub.converters.torch_passes.model_io import load_module
    from edgehub.converters.torch_passes.training import TrainSettings, fit, predict_logits

    x, y = fmnist_small.inputs["x"], fmnist_small.labels
    few = TrainingSet(inputs={"x": x[:64]}, labels=y[:64], val_inputs={}, val_labels=np.array([], np.int64))
    transfer = TrainingSet(inputs={"x": x[:64]}, labels=y[:64], val_inputs={}, val_labels=np.array([], np.int64),
                           unlabeled={"x": x[64:]})
    teacher = load_module(resnet.torch_model)
    wanted = predict_logits(teacher, fmnist_small.val_inputs).argmax(1)
    agreement = {"few": 0.0, "transfer": 0.0}
    # Two starts each (100 held-out images are few: one start's margin varies with the CPU's kernels).
    for seed in (0, 1):
        for name, data in (("few", few), ("transfer", transfer)):
            student = load_module(resnet.torch_model)
            reinitialise(student, seed)
            report = fit(student, data, TrainSettings(epochs=3, lr=3e-3, batch_size=64, seed=seed), teacher=teacher)
            assert report["samples"] == 64 and report["unlabeled_samples"] == (536 if name == "transfer" else 0)
            hits = predict_logits(student, fmnist_small.val_inputs).argmax(1) == wanted
            agreement[name] += float(hits.mean()) / 2
    assert agreement["transfer"] > agreement["few"] + 0.05, agreement
    # Without a teacher the transfer set has nothing to teach: it is left out.
    student = load_module(resnet.torch_model)
    assert fit(student, transfer, TrainSettings(epochs=1, batch_size=64))["unlabeled_samples"] == 0
    # A transfer set of another image size is refused with a clear message.
    odd = TrainingSet(inputs={"x": x[:64]}, labels=y[:64], val_inputs={}, val_labels=np.array([], np.int64),
                      unlabeled={"x": x[64:, :, :14, :14]})
    with pytest.raises(ConversionError, match=r"unlabeled set's 'x' has samples of shape \[1, 14, 14\]"):
        fit(load_module(resnet.torch_model), odd, TrainSettings(), teacher=teacher)


def test_separable_init_is_exact_for_rank_one_filters():
    import torch

    from edgehub.converters.torch_passes.depthwise import separable_from

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=True)
    with torch.no_grad():  # W[o, i] = p[o, i] * d[i]: exactly depthwise-then-pointwise
        conv.weight.copy_(torch.randn(5, 6, 1, 1) * torch.randn(1, 6, 3, 3))
    x = torch.randn(2, 6, 9, 9)
    pair = separable_from(conv)
    assert pair[0].groups == 6 and pair[1].kernel_size == (1, 1)
    assert torch.allclose(pair(x), conv(x), atol=1e-4)
    # A general filter is approximated, not reproduced, but the rank-1 start is far better than random.
    general = torch.nn.Conv2d(6, 5, 3, padding=1)
    err = (separable_from(general)(x) - general(x)).pow(2).mean()
    random_pair = torch.nn.Sequential(torch.nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.nn.Conv2d(6, 5, 1))
    assert err < (random_pair(x) - general(x)).pow(2).mean()


def test_depthwise_separable_pass(resnet, mobilenet, fmnist_small, tmp_path):
    out = run_pass("depthwise_separable", resnet, {"epochs": 1}, ctx_for(resnet, fmnist_small, tmp_path))
    replaced = out.notes["replaced"]
    assert replaced and all(r["weights_after"] < r["weights_before"] for r in replaced)
    assert "stem.0" not in {r["layer"] for r in replaced}  # 1 input channel: left alone
    groups = [a.i for n in load_onnx(out.path).graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert sum(g > 1 for g in groups) == len(replaced)
    assert out.notes["training"]["task"] == "recover"
    with pytest.raises(NotApplicable, match="already separable"):
        run_pass("depthwise_separable", mobilenet, {}, ctx_for(mobilenet, fmnist_small, tmp_path))


def test_training_passes_explain_what_they_need(resnet, fmnist_small, tmp_path):
    from edgehub.converters.onnx_model import onnx_artifact

    onnx_only = onnx_artifact(resnet.path)
    with pytest.raises(ConversionError, match="ONNX only.*package.module:factory"):
        run_pass("structured_prune", onnx_only, {}, PassContext(workdir=tmp_path, training=fmnist_small))
    with pytest.raises(ConversionError, match="--train"):
        run_pass("distill", resnet, {}, PassContext(workdir=tmp_path, source_model=resnet.torch_model))
    # After an ONNX-only step the PyTorch model is gone: training must come first in a chain.
    q = run_pass("int8_dynamic", resnet, {"force": True}, PassContext(workdir=tmp_path))
    with pytest.raises(ConversionError, match="first in the chain"):
        run_pass("structured_prune", q, {}, ctx_for(resnet, fmnist_small, tmp_path))
    with pytest.raises(ConversionError, match="student must be"):
        run_pass("distill", resnet, {"student": "wider"}, ctx_for(resnet, fmnist_small, tmp_path))


def test_slim_keeps_the_pytorch_model(resnet, tmp_path):
    slim = run_pass("slim", resnet, {}, PassContext(workdir=tmp_path))
    assert slim.torch_model == resnet.torch_model
    assert onnx.load(str(slim.path)).graph.node


def test_augment_batch_shifts_and_flips_each_image():
    from edgehub.converters.torch_passes.augment import augment_batch

    x = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6) + 1
    assert augment_batch(x, "none", np.random.default_rng(0)) is x
    seen_shifts, seen_flips = set(), 0
    for seed in range(40):
        out = augment_batch(x, "shift-flip", np.random.default_rng(seed), max_shift=1)
        assert out.shape == x.shape and out.dtype == x.dtype
        for i in range(2):
            # Each output is the original (maybe mirrored) moved by at most one pixel, zeros let in.
            matches = []
            for flip in (False, True):
                src = x[i, :, :, ::-1] if flip else x[i]
                padded = np.pad(src, ((0, 0), (1, 1), (1, 1)))
                for dy in range(3):
                    for dx in range(3):
                        if np.array_equal(out[i], padded[:, dy:dy + 6, dx:dx + 6]):
                            matches.append((flip, dy - 1, dx - 1))
            assert matches, f"image {i} (seed {seed}) is not a shift or flip of the original"
            seen_shifts.add(matches[0][1:])
            seen_flips += matches[0][0]
    assert len(seen_shifts) > 4 and 0 < seen_flips < 80  # both directions drawn, flips about half


def test_distill_with_augmentation_scores_augmented_batches(resnet, fmnist_small, tmp_path):
    progress = []
    student = run_pass("distill", resnet, {"params_ratio": 0.3, "epochs": 1, "round_to": None,
                                           "augment": "shift-flip"},
                       ctx_for(resnet, fmnist_small, tmp_path, progress))
    assert student.notes["training"]["augment"] == "shift-flip"
    assert progress[-1].val_accuracy is not None and np.isfinite(progress[-1].loss)
    # A non-image training set is refused with one clear line, before any training.
    flat = TrainingSet(inputs={"x": fmnist_small.inputs["x"].reshape(600, -1)}, labels=fmnist_small.labels,
                       val_inputs={}, val_labels=np.array([], dtype=np.int64))
    with pytest.raises(ConversionError, match=r"needs a single image input of shape \(N, C, H, W\)"):
        from edgehub.converters.torch_passes.training import TrainSettings, fit
        from edgehub.hub.examples.nets import resnet_small

        fit(resnet_small(width=8), flat, TrainSettings(augment="shift"))


def test_models_with_odd_pointwise_channels_train_without_onednn():
    """The distilled student above (8->17 and 17->35 shortcuts) hung in oneDNN's 1x1 backward on an
    AVX2-only CPU; fit() trains such models on PyTorch's own kernels."""
    import torch

    from edgehub.converters.torch_passes.training import onednn_can_train

    even = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 16, 1), torch.nn.Conv2d(16, 24, 3))
    odd = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 17, 1))
    assert onednn_can_train(even) and not onednn_can_train(odd)
    assert torch.backends.mkldnn.enabled  # fit() restores the setting; nothing else is affected
