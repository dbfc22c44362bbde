"""The agent on an ARM CPU: aarch64 CPython with the aarch64 wheels of ONNX Runtime and LiteRT,
under qemu user-mode emulation (deploy/arm64/rootfs.sh), against a real hub on this machine.

It downloads the variants of a model published for a Raspberry Pi profile, benchmarks them in its
child (ARM kernels: int8 rounds differently from x86), checks them against the references the hub
computed on x86 and reports; the reference check passes where it should (fp32, fp16, int8 of a real
model) and catches what it should (a variant whose file computes something else). Timings are
labelled as emulated. Marked slow; CI builds the root file system first (.ci/run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from api_hub import ApiHub
from arm64_chroot import command, unavailable
from click.testing import CliRunner
from fault_harness import Crafted, Proc, agent_port, enroll, http_json, register_crafted, wait_until

from edgehub.hub.cli import cli
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.zoo.store import ArtifactStore

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")]

PROFILE = "rpi5"


def _permuted(source: Path, out: Path) -> Path:
    """The same network with its last layer's output rows rotated: a valid file whose top-1 answers
    are wrong, as a broken converter could make it."""
    model = onnx.load(str(source))
    rolled = 0
    for init in model.graph.initializer:  # the 10-class layer's weight (either layout) and bias
        array = onnx.numpy_helper.to_array(init)
        axis = 0 if array.ndim and array.shape[0] == 10 else (1 if array.ndim == 2 and array.shape[1] == 10 else None)
        if axis is not None:
            init.CopyFrom(onnx.numpy_helper.from_array(np.roll(array, 1, axis=axis), init.name))
            rolled += 1
    assert rolled == 2, f"expected the last layer's weight and bias, rolled {rolled} tensors"
    onnx.save(model, str(out))
    return out


def _tflite_twin(source: Path, out: Path) -> Path:
    """The digits MLP (Gemm, ReLU, Gemm) rebuilt in PyTorch from its ONNX weights and converted to
    TFLite with litert-torch: the same function, for the aarch64 LiteRT kernels."""
    import litert_torch
    import torch

    weights = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy()) for i in onnx.load(str(source)).graph.initializer}
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    net.load_state_dict(weights)
    litert_torch.convert(net, (torch.zeros(8, 64),)).export(str(out))
    return out


def _litert_variants(work: Path) -> tuple[list[Crafted], list, list]:
    """The digits CNN's LiteRT variants (fp32, full int8 with int8 I/O, dynamic-range int8), each
    with references computed here on x86 by LiteRT itself, as the hub computes them at publish."""
    from digits_models import shared_digits

    from edgehub.agent.runtimes import runtime_for

    shared = shared_digits()
    x = shared["x"][1400:1408]
    crafted = []
    for label, artifact in (("fp32", shared["tflite"]["none"]), ("int8", shared["tflite"]["int8"]),
                            ("dynamic-int8", shared["tflite"]["dynamic_int8"])):
        session = runtime_for("tflite").load(artifact.path, threads=1)
        name = session.inputs[0].name
        outputs = np.concatenate([session.run({name: x[i:i + 1]})[0] for i in range(len(x))])
        refs = work / f"litert-{label}.refs.npz"
        np.savez(refs, **{f"input.{name}": x, f"output.{artifact.outputs[0].name}": outputs})
        crafted.append(Crafted(label, artifact.path, format="tflite", references=refs))
    fp32 = shared["tflite"]["none"]
    return crafted, fp32.inputs, fp32.outputs


def _explain(hub: ApiHub, device: str, model: str) -> dict:
    result = CliRunner().invoke(cli, ["fleet", "explain", device, "--model", model, "--home", str(hub.paths.root),
                                      "--json"])
    return json.loads(result.output) if result.exit_code == 0 else {}


def test_the_agent_on_emulated_arm64_checks_references_and_reports(tmp_path, tiny_mlp):
    work = tmp_path / "arm"
    hub = ApiHub(work / "home")
    device = None
    try:
        _, config = enroll(hub.paths, "pi-emulated", work / "agents" / "pi-emulated", profile=PROFILE)
        device = Proc(command(["-m", "edgehub.hub.cli", "agent", "run", "--config", str(config), "-v"], work),
                      work / "agent.log").start()
        outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"],
                                         profiles=[PROFILE]), hub.paths, hub.registry)
        published = {v.id: v for v in outcome.variants}
        fp32 = next(v for v in outcome.variants if v.parent is None)
        # A second model: the real fp32 file, and a broken one shipped with the same references.
        refs = work / "refs.npz"
        refs.write_bytes(ArtifactStore(hub.paths.artifacts_dir).path_for(fp32.references_sha256).read_bytes())
        broken = register_crafted(hub.paths, hub.registry, "digits-check", [
            Crafted("good", Path(tiny_mlp["onnx"]), references=refs),
            Crafted("broken", _permuted(Path(tiny_mlp["onnx"]), work / "broken.onnx"), references=refs),
            Crafted("litert", _tflite_twin(Path(tiny_mlp["onnx"]), work / "twin.tflite"), format="tflite",
                    references=refs)],
            profile=PROFILE, inputs=fp32.inputs, outputs=fp32.outputs)
        # A third model: LiteRT's fp32, full-int8 and dynamic-range int8 files of a digits CNN.
        litert, litert_in, litert_out = _litert_variants(work)
        lite = register_crafted(hub.paths, hub.registry, "digits-litert", litert, profile=PROFILE,
                                inputs=litert_in, outputs=litert_out)
        hub.fleet.deploy("digits", outcome.version.version, [PROFILE])
        hub.fleet.deploy("digits-check", 1, [PROFILE])
        hub.fleet.deploy("digits-litert", 1, [PROFILE])

        # The device says what it is: an aarch64 CPU, emulated, with the aarch64 runtimes.
        wait_until(lambda: (hub.fleet.get_device("pi-emulated") or None) and hub.fleet.get_device("pi-emulated").state,
                   180, "the emulated agent to report its state", interval=0.5)
        state = hub.fleet.get_device("pi-emulated").state
        assert state.hardware.arch == "aarch64" and state.hardware.emulated.startswith("qemu-user"), state.hardware
        assert "onnxruntime" in state.runtimes and "litert" in state.runtimes, state.runtimes

        def reports() -> dict:
            return {b["variant_id"]: b for b in hub.fleet.device_benchmarks("pi-emulated")
                    if b["settings"] == "default"}

        wanted = set(published) | {v.id for v in broken} | {v.id for v in lite}
        wait_until(lambda: wanted <= set(reports()), 900, "every variant benchmarked on the emulated device",
                   interval=1)
        found = reports()
        events = {e["variant_id"]: e for e in hub.fleet.events("pi-emulated") if e.get("kind") == "benchmark"}
        for variant_id, variant in published.items():
            report = found[variant_id]
            assert report["ok"], (variant_id, report["error"], device.log()[-3000:])
            # Passes where it should: ARM kernels against x86 references of the same file.
            assert report["agreement"] >= 0.99, (variant_id, report)
            assert events[variant_id]["emulated"].startswith("qemu-user")
            if variant.precision == "fp32":
                assert report["agreement"] == 1.0
        # LiteRT's aarch64 kernels (XNNPACK's fp32 and int8 ones) pass the same check.
        twin = found["digits-check-v1-litert"]
        assert twin["ok"] and twin["runtime"] == "litert" and twin["agreement"] >= 0.99, twin
        for v in lite:
            report = found[v.id]
            assert report["ok"] and report["runtime"] == "litert" and report["agreement"] >= 0.99, (v.id, report)
        # Catches what it should: the broken file loads and runs, and is rejected on its outputs.
        bad = found["digits-check-v1-broken"]
        assert bad["ok"] and bad["agreement"] < 0.5, bad
        check = _explain(hub, "pi-emulated", "digits-check")
        verdicts = {v["variant_id"]: v for v in check["explanation"]["verdicts"]}
        assert check["winner"] == "digits-check-v1-good"
        assert "disagree with the reference outputs" in verdicts["digits-check-v1-broken"]["reason"]
        assert check["emulated"].startswith("qemu-user")

        # The winner is activated and serves on ARM.
        chosen = _explain(hub, "pi-emulated", "digits")["winner"]
        assert chosen in published

        def serving() -> bool:
            slots = {s.model: s.active_variant for s in (hub.fleet.get_device("pi-emulated").state.slots or [])}
            return slots.get("digits") == chosen

        wait_until(serving, 300, "the chosen variant to be active on the emulated device", interval=1)
        # The answers served on ARM are the fp32 model's answers on x86 for the reference samples.
        shipped = np.load(refs)
        want = next(shipped[k] for k in shipped.files if k.startswith("output."))[:4]
        code, reply = http_json(f"http://127.0.0.1:{agent_port(device)}/predict/digits",
                                json.dumps({"inputs": {"x": shipped["input.x"][:4].tolist()}}).encode(), timeout=60)
        assert code == 200 and reply["variant"] == chosen
        [scores] = reply["outputs"].values()
        assert np.array_equal(np.argmax(np.asarray(scores), axis=-1), np.argmax(want, axis=-1))
    finally:
        if device is not None and device.alive():
            device.kill9()  # unshare ignores SIGTERM; SIGKILL takes the emulated agent down with it
        hub.close()
