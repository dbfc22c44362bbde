"""Every compression pass and chain on two CNNs trained on Fashion-MNIST, measured side by side.

    .venv/bin/python bench/compression_bench.py [--resnet-width 32] [--mobilenet-width 12]
        [--train-samples 20000] [--epochs 4] [--ft-epochs 2] [--ft-teacher parent] [--kd-epochs 5]
        [--chain-ratio 0.4] [--seeds 1] [--kd-ratio 0.3] [--kd-unlabeled 0] [--kd-init teacher|random]
        [--augment none|shift|shift-flip] [--arch resnet] [--only distilled,student-no-kd] [--teacher-cache DIR]
        [--out results.md]

For a ResNet-style and a MobileNet-style network (edgehub.hub.examples.nets) trained here, it
runs the passes through the same registry and PassContext the publish pipeline uses, and prints
per variant: parameters, MACs (per image), file size and ratio to fp32, top-1 on the 10,000
test images and the drop from fp32, and ONNX Runtime p50 latency ratios to fp32 at batch 1 and
batch 32 (one thread; every model of an architecture measured in the same process, rounds
interleaved). Then the issue's targets, each with its figures and met / not met.

The accuracy-guarded int8 proof needs a model that plain int8 breaks. It is made from the
trained ResNet by a function-preserving change: one channel after the first block's first
BN is scaled up 1000x and the next convolution's weights for it scaled down 1000x (ReLU
commutes with positive scaling, so fp32 outputs are unchanged). That channel's activations
then have extreme outliers, as in LLM.int8(); a per-tensor int8 scale fitted to them crushes
every other channel of the tensor to zero.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).parent))
from latency import compare  # noqa: E402

console = Console(width=150, stderr=True)


@dataclass
class Row:
    arch: str
    label: str
    parent: str | None
    path: Path
    params: int
    macs: int
    accuracy: float
    note: str = ""


def train_bar():
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)


class BarReporter:
    """Turns TrainProgress updates into one rich bar per (task, epoch)."""

    def __init__(self, progress: Progress, prefix: str):
        self.progress, self.prefix, self.tasks = progress, prefix, {}

    def __call__(self, p) -> None:
        key = (p.task, p.epoch)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{self.prefix} {p.task} {p.epoch}/{p.epochs}", total=p.steps,
                                                     status="")
        val = "" if p.val_accuracy is None else f" val {p.val_accuracy:.4f}"
        self.progress.update(self.tasks[key], completed=p.step, status=f"loss {p.loss:.4f}{val}")


def add_outlier_channel(model, scale: float = 1000.0):
    """Function-preserving: scale one channel after layer1.0.bn1 up, and conv2's input for it down."""
    import torch

    outlier = copy.deepcopy(model)
    block = outlier.layer1[0]
    with torch.no_grad():
        channel = int(block.bn1.weight.abs().argmax())
        block.bn1.weight[channel] *= scale
        block.bn1.bias[channel] *= scale
        block.conv2.weight[:, channel] /= scale
    return outlier.eval(), f"layer1.0 channel {channel} x{scale:g}"


def run_arch(arch: str, factory, args, data, test, tmp: Path, progress: Progress) -> tuple[list[Row], dict]:
    import torch

    from edgehub.converters.passes.base import NotApplicable, PassContext, run_pass
    from edgehub.converters.torch_passes.cost import macs_and_params
    from edgehub.converters.torch_passes.model_io import as_tensors, example_inputs, export_module
    from edgehub.converters.torch_passes.training import TrainSettings, accuracy, fit
    from edgehub.hub.publish.evaluate import run_onnx, score_outputs

    x_test, y_test = test
    example = example_inputs(data.inputs)
    torch.manual_seed(0)
    width = getattr(args, f"{arch}_width")
    teacher = factory(width=width)
    report = BarReporter(progress, arch)
    started = time.perf_counter()
    # Trained teachers can be kept between runs (same arch, width, data and epochs).
    cached = args.teacher_cache / f"{arch}-w{width}-n{args.train_samples}-e{args.epochs}.pt" if args.teacher_cache else None
    if cached is not None and cached.is_file():
        teacher.load_state_dict(torch.load(str(cached), weights_only=True))
        teacher.eval()
    else:
        fit(teacher, data, TrainSettings(epochs=args.epochs, lr=2e-3), task="train", on_progress=report)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), str(cached))
    facts = {"train_s": time.perf_counter() - started, "torch_top1": accuracy(teacher, {"x": x_test}, y_test)}
    exported = export_module(teacher, example, tmp / f"{arch}.onnx", tmp / f"{arch}.pt")
    reference = run_onnx(exported.path, {"x": x_test})

    def score(candidate) -> float:
        return score_outputs(run_onnx(candidate.path, {"x": x_test}), reference, y_test)["accuracy"]

    ctx = PassContext(workdir=tmp / arch, calibration={"x": data.inputs["x"][:512]}, score=score,
                      training=data, source_model=exported.torch_model, on_train_progress=report,
                      on_progress=lambda message: None)
    rows: list[Row] = []
    built = {}

    def add(label, parent, artifact, params, macs, note=""):
        built[label] = artifact
        rows.append(Row(arch, label, parent, artifact.path, params, macs, score(artifact), note))
        console.print(f"{arch} {label}: top-1 {rows[-1].accuracy:.4f}, {artifact.size_bytes / 1024:.1f} KB {note}")

    macs, params = macs_and_params(teacher, as_tensors(example))
    add("fp32", None, run_pass("slim", exported, {}, ctx), params, macs)

    def wanted(label: str) -> bool:
        return not args.only or label in args.only

    def step(label, parent, pass_name, config, note_fn=lambda notes: ""):
        if not wanted(label) or parent not in built:
            return None
        t0 = time.perf_counter()
        try:
            artifact = run_pass(pass_name, built[parent], config, ctx)
        except NotApplicable as exc:
            console.print(f"{arch} {label}: not applicable: {exc}")
            facts.setdefault("not_applicable", {})[label] = str(exc)
            return None
        p = artifact.notes.get("params", next(r.params for r in rows if r.label == parent))
        m = artifact.notes.get("macs", next(r.macs for r in rows if r.label == parent))
        add(label, parent, artifact, p, m, note_fn(artifact.notes) + f" ({time.perf_counter() - t0:.0f} s)")
        return artifact

    step("fp16", "fp32", "fp16", {})
    step("int8", "fp32", "int8_static", {"scheme": "auto"},
         lambda n: f"{n['scheme']}/{n['calibrate_method']}" + "".join(f", {s}" for s in n.get("steps", [])))
    step("int4-weights", "fp32", "int4_weight", {},
         lambda n: f"{n['quantized_layers']} MatMul/Gemm 4-bit, {n['convolutions_left_float']} convs float")
    step("magnitude-50", "fp32", "magnitude_prune", {"sparsity": 0.5},
         lambda n: f"sparsity {n['sparsity']:.2f}, gzip {n['gzip_ratio_to_parent']:.2f}x")
    sens = step("sensitivity-70", "fp32", "sensitivity_prune", {"target_sparsity": 0.7},
                lambda n: f"sparsity {n['sparsity']:.2f}, gzip {n['gzip_ratio_to_parent']:.2f}x")
    if sens is not None:
        facts["sensitivity"] = sens.notes
    rt = getattr(args, f"{arch}_round_to")
    ft = {"epochs": args.ft_epochs, "round_to": rt, "augment": args.augment}
    kd = {"epochs": args.kd_epochs, "augment": args.augment, "temperature": args.kd_temperature, "alpha": args.kd_alpha}
    step("pruned", "fp32", "structured_prune", {"target_ratio": 0.5, "metric": "macs", "teacher": args.ft_teacher,
                                                 "uniform": not args.prune_global, **ft},
         lambda n: f"MACs {n['macs_ratio']:.2f}x")
    step("pruned-int8", "pruned", "int8_static", {})

    def kd_config(seed: int) -> dict:
        return {"student": "narrow", "params_ratio": args.kd_ratio, "round_to": rt, "init": args.kd_init,
                "seed": seed, **kd}

    step("distilled", "fp32", "distill", kd_config(args.first_seed),
         lambda n: f"{n['params_ratio_to_teacher']:.2f}x teacher params")
    step("distilled-int8", "distilled", "int8_static", {})

    from edgehub.converters.passes.torch_compress import DistillConfig, make_student, train_settings

    # The label-only twins: the distilled student's start and schedule, trained on the labels alone.
    # With a transfer set the distilled student takes more steps per epoch; a second twin gets
    # that many steps too (more epochs), so "more training" cannot pass for "the teacher helped".
    twins = {"student-no-kd": args.kd_epochs}
    if data.unlabeled_size:
        twins["student-no-kd-steps"] = round(args.kd_epochs * (data.size + data.unlabeled_size) / data.size)

    def label_only_student(seed: int, epochs: int):
        config = DistillConfig(**{**kd_config(seed), "epochs": epochs})
        student, _ = make_student(config, teacher, as_tensors(example))
        fit(student, data, train_settings(config), task=f"no-teacher seed {seed}", on_progress=report)
        stem = f"{arch}-nokd-{seed}-e{epochs}"
        return student, export_module(student, example, tmp / f"{stem}.onnx", tmp / f"{stem}.pt")

    for label, epochs in twins.items():
        if wanted("student-no-kd"):
            student, art = label_only_student(args.first_seed, epochs)
            s_macs, s_params = macs_and_params(student, as_tensors(example))
            add(label, "fp32", art, s_params, s_macs, f"same student, labels only, {epochs} epochs")

    # More seeds for the distillation comparison: one run each is within seed-to-seed noise.
    if args.seeds > 1 and "distilled" in built and wanted("student-no-kd"):
        runs = facts["seed_runs"] = {label: [get_row(rows, label).accuracy] for label in ("distilled", *twins)}
        for seed in range(args.first_seed + 1, args.first_seed + args.seeds):
            runs["distilled"].append(score(run_pass("distill", built["fp32"], kd_config(seed), ctx)))
            for label, epochs in twins.items():
                runs[label].append(score(label_only_student(seed, epochs)[1]))
            console.print(f"{arch} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in runs.items()))

    # The chain: prune -> distill -> int8, each step its own variant.
    step("chain-pruned", "fp32", "structured_prune", {"target_ratio": args.chain_ratio, "metric": "params", "epochs": 1,
                                                       "round_to": rt, "augment": args.augment,
                                                       "uniform": not args.chain_global},
         lambda n: f"params {n['params_ratio']:.2f}x")
    step("chain-pruned-kd", "chain-pruned", "distill", {"student": "parent", "teacher": "source", **kd})
    step("chain-pruned-kd-int8", "chain-pruned-kd", "int8_static", {})
    step("separable", "fp32", "depthwise_separable", kd, lambda n: f"{len(n['replaced'])} convs separable")

    if arch == "resnet" and wanted("outlier-int8-guarded"):
        outlier, how = add_outlier_channel(teacher)
        art = export_module(outlier, example, tmp / "outlier.onnx", tmp / "outlier.pt")
        add("outlier-fp32", None, run_pass("slim", art, {}, ctx), params, macs, how)
        plain = step("outlier-int8", "outlier-fp32", "int8_static", {})
        guarded = step("outlier-int8-guarded", "outlier-fp32", "int8_guarded", {"max_drop": 0.003},
                       lambda n: "kept float: " + ", ".join(n["guard"]["kept_float"]))
        facts["guard"] = guarded.notes["guard"] if guarded else None
        facts["outlier_plain"] = plain is not None
    return rows, facts


def get_row(rows: list[Row], label: str) -> Row:
    return next(r for r in rows if r.label == label)


def latency_ratios(rows: list[Row], x_test: np.ndarray, seconds: float) -> dict[tuple[str, str], tuple[float, float]]:
    out = {}
    for arch in dict.fromkeys(r.arch for r in rows):
        mine = [r for r in rows if r.arch == arch]
        for batch in (1, 32):
            feed = {"x": x_test[:batch]}
            # Each model is compared with its own fp32 (the outlier model with its own).
            p50 = compare({r.label: r.path for r in mine}, feed, threads=1, rounds=3, seconds=seconds)
            for r in mine:
                base = "outlier-fp32" if r.label.startswith("outlier") else "fp32"
                out.setdefault((arch, r.label), [0.0, 0.0])[0 if batch == 1 else 1] = p50[r.label] / p50[base]
    return out


def base_of(r: Row, rows: list[Row]) -> Row:
    name = "outlier-fp32" if r.label.startswith("outlier") else "fp32"
    return next(b for b in rows if b.arch == r.arch and b.label == name)


def results_table(rows: list[Row], latency) -> str:
    lines = ["| arch | variant | parent | params | MACs | size KB | size ratio | top-1 | drop (pts) | lat b1 | lat b32 | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        b = base_of(r, rows)
        l1, l32 = latency[(r.arch, r.label)]
        lines.append(f"| {r.arch} | {r.label} | {r.parent or '-'} | {r.params:,} | {r.macs / 1e6:.2f}M | "
                     f"{r.path.stat().st_size / 1024:.1f} | {r.path.stat().st_size / b.path.stat().st_size:.3f} | "
                     f"{r.accuracy:.4f} | {(b.accuracy - r.accuracy) * 100:+.2f} | {l1:.2f} | {l32:.2f} | {r.note.strip()} |")
    return "\n".join(lines)


def targets_table(rows: list[Row], latency, facts: dict) -> str:
    def get(arch, label):
        return next((r for r in rows if r.arch == arch and r.label == label), None)

    lines = ["| arch | target | figures | met |", "|---|---|---|---|"]
    for arch in dict.fromkeys(r.arch for r in rows):
        fp32 = get(arch, "fp32")
        size = lambda r, fp32=fp32: r.path.stat().st_size / fp32.path.stat().st_size  # noqa: E731
        drop = lambda r, fp32=fp32: (fp32.accuracy - r.accuracy) * 100  # noqa: E731
        checks = []
        r = get(arch, "int8")
        if r:
            checks.append(("int8: size <= 0.27x, drop <= 0.3 pts", f"size {size(r):.3f}x, drop {drop(r):+.2f}",
                           size(r) <= 0.27 and drop(r) <= 0.3))
        r = get(arch, "pruned")
        if r:
            l1, l32 = latency[(arch, "pruned")]
            checks.append(("structured prune 0.5x MACs + FT: latency <= 0.6x, drop <= 1 pt",
                           f"MACs {r.macs / fp32.macs:.2f}x, latency b1 {l1:.2f}x / b32 {l32:.2f}x, drop {drop(r):+.2f}",
                           min(l1, l32) <= 0.6 and drop(r) <= 1.0))
        r = get(arch, "distilled")
        twins = [t for t in (get(arch, "student-no-kd"), get(arch, "student-no-kd-steps")) if t]
        if r and twins:
            # One run per seed (--seeds), or the rows' single run.
            runs = facts[arch].get("seed_runs") or {row.label: [row.accuracy] for row in (r, *twins)}
            kd_acc = np.array(runs["distilled"])
            kd_drop = (fp32.accuracy - kd_acc.mean()) * 100
            # Against the better of the twins (same epochs; same steps when a transfer set is used).
            best = max((t.label for t in twins), key=lambda label: np.mean(runs[label]))
            plain_acc = np.array(runs[best])
            wins = int((kd_acc > plain_acc).sum())

            def mean_sd(a: np.ndarray) -> str:
                return f"{a.mean():.4f}" + (f" +- {a.std(ddof=1):.4f}" if len(a) > 1 else "")

            checks.append(("distilled student <= 0.3x params: within 1.5 pts, better than no-KD",
                           f"params {r.params / fp32.params:.2f}x, {len(kd_acc)} seed(s): KD top-1 {mean_sd(kd_acc)} "
                           f"(drop {kd_drop:+.2f}), {best} {mean_sd(plain_acc)}; KD ahead with {wins} of {len(kd_acc)}",
                           r.params / fp32.params <= 0.3 and kd_drop <= 1.5 and kd_acc.mean() > plain_acc.mean()))
        r = get(arch, "chain-pruned-kd-int8")
        if r:
            checks.append(("prune -> distill -> int8: size <= 0.15x, drop <= 1.5 pts",
                           f"size {size(r):.3f}x, drop {drop(r):+.2f}", size(r) <= 0.15 and drop(r) <= 1.5))
        plain, guarded = get(arch, "outlier-int8"), get(arch, "outlier-int8-guarded")
        if plain and guarded:
            base = get(arch, "outlier-fp32")
            g = facts[arch]["guard"]
            checks.append(("guarded int8 where plain int8 misses 0.3 pts: within budget, float layers named",
                           f"plain drop {(base.accuracy - plain.accuracy) * 100:+.2f}, guarded drop "
                           f"{(base.accuracy - guarded.accuracy) * 100:+.2f}, kept float: {', '.join(g['kept_float'])}",
                           (base.accuracy - plain.accuracy) * 100 > 0.3 and g["within_budget"]))
        lines += [f"| {arch} | {t} | {f} | {'**met**' if ok else '**not met**'} |" for t, f, ok in checks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet-width", type=int, default=32)
    parser.add_argument("--mobilenet-width", type=int, default=12)
    parser.add_argument("--resnet-round-to", type=int, default=16, help="pruned channel counts: multiples of this")
    parser.add_argument("--mobilenet-round-to", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4, help="teacher training epochs")
    parser.add_argument("--ft-epochs", type=int, default=2, help="fine-tuning epochs after structured pruning")
    parser.add_argument("--kd-epochs", type=int, default=5, help="distillation epochs")
    parser.add_argument("--ft-teacher", choices=["none", "parent"], default="parent",
                        help="fine-tune the pruned model on the labels only, or distil from the unpruned one too")
    parser.add_argument("--augment", choices=["none", "shift", "shift-flip"], default="none",
                        help="augmentation for every training step after the teacher's (the label-only "
                             "student gets the same)")
    parser.add_argument("--chain-ratio", type=float, default=0.4,
                        help="the chain's first step: structured pruning to this share of the params")
    parser.add_argument("--prune-global", action="store_true",
                        help="the 'pruned' variant: channels compete across layers (default: the same share)")
    parser.add_argument("--chain-global", action="store_true",
                        help="the chain's pruning: channels compete across layers by magnitude (default: "
                             "the same share of every layer)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train the distilled and the label-only student with this many seeds each and "
                             "compare the means")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one")
    parser.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature T")
    parser.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the distillation term")
    parser.add_argument("--kd-ratio", type=float, default=0.3,
                        help="the narrowed student's share of the teacher's params (the target asks <= 0.3)")
    parser.add_argument("--kd-init", choices=["teacher", "random"], default="teacher",
                        help="the narrowed student (and its label-only twin) starts from the teacher's "
                             "weights or from a random initialisation")
    parser.add_argument("--kd-unlabeled", type=int, default=0,
                        help="this many more training images, after --train-samples, as an unlabeled transfer "
                             "set: every pass with a teacher also learns its outputs on them (the label-only "
                             "twin cannot use them)")
    parser.add_argument("--teacher-cache", type=Path, help="keep trained teachers here and reuse them")
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per latency round")
    parser.add_argument("--arch", choices=["resnet", "mobilenet"], action="append")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(),
                        help="comma-separated variant labels to build (besides fp32); default: all")
    parser.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = parser.parse_args()

    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import mobilenet_small, resnet_small
    from edgehub.hub.publish.eval_data import bind_training_set
    from edgehub.protocol.manifest import TensorSpec

    x_train, y_train = load_fashion_mnist("train", limit=args.train_samples + args.kd_unlabeled)
    x_test, y_test = load_fashion_mnist("test")
    n = args.train_samples
    data = bind_training_set({"x": x_train[:n], "y": y_train[:n]},
                             [TensorSpec(name="x", dtype="float32", shape=["batch", 1, 28, 28])], "train")
    if args.kd_unlabeled:  # their labels are dropped here
        data.unlabeled = {"x": x_train[n:]}
        if data.unlabeled_size < args.kd_unlabeled:
            parser.error(f"--kd-unlabeled: only {data.unlabeled_size} training images are left after {n}")
    archs = {"resnet": resnet_small, "mobilenet": mobilenet_small}
    started = time.perf_counter()
    rows: list[Row] = []
    facts: dict = {}
    with tempfile.TemporaryDirectory() as tmp, train_bar() as progress:
        for arch in args.arch or list(archs):
            arch_rows, facts[arch] = run_arch(arch, archs[arch], args, data, (x_test, y_test), Path(tmp), progress)
            rows += arch_rows
            # A record as we go, so a failure later does not lose the training done so far.
            console.print("\n".join(f"ROW {r.arch} {r.label} params={r.params} macs={r.macs} "
                                     f"bytes={r.path.stat().st_size} top1={r.accuracy:.4f}" for r in arch_rows))
        latency = latency_ratios(rows, x_test, args.seconds)
        elapsed = time.perf_counter() - started
        header = (f"Widths: ResNet {args.resnet_width}, MobileNet {args.mobilenet_width} (pruned channels multiples "
                  f"of {args.resnet_round_to} / {args.mobilenet_round_to}); trained on {data.size:,} of the training "
                  f"images ({len(data.val_labels):,} more "
                  f"held out for validation), {args.epochs} epochs; fine-tuning {args.ft_epochs} (teacher: "
                  f"{args.ft_teacher}), distillation "
                  f"{args.kd_epochs} epochs (T={args.kd_temperature:g}, alpha={args.kd_alpha:g}; student: "
                  f"{args.kd_ratio}x params, init {args.kd_init}, {args.kd_unlabeled:,} unlabeled transfer images); "
                  f"augmentation {args.augment}; chain pruned to {args.chain_ratio}x params; top-1 on the 10,000 test "
                  f"images; whole run {elapsed / 60:.1f} min.\n"
                  + "\n".join(f"- {a}: teacher trained in {f['train_s']:.0f} s, torch top-1 {f['torch_top1']:.4f}"
                              for a, f in facts.items()))
        text = "\n\n".join([header, results_table(rows, latency), targets_table(rows, latency, facts)])
        for arch, f in facts.items():
            if f.get("guard"):
                g = f["guard"]
                text += (f"\n\n{arch} guarded int8: all-int8 drop {g['int8_drop'] * 100:.2f} pts; held-back cosine "
                         "recovered when only that layer is float: " + ", ".join(
                             f"{k} {v:+.5f}" for k, v in sorted(g.get('sensitivity', {}).items(), key=lambda kv: -kv[1])[:6]))
            if f.get("sensitivity"):
                s = f["sensitivity"]
                text += (f"\n\n{arch} sensitivity-70 per-layer ratios: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in s["layer_ratios"].items()))
            if f.get("seed_runs"):
                runs = f["seed_runs"]
                text += (f"\n\n{arch} distillation per seed ({' / '.join(runs)}): "
                         + ", ".join(f"seed {args.first_seed + k} " + " / ".join(f"{v[k]:.4f}" for v in runs.values())
                                     for k in range(args.seeds)))
            for label, why in f.get("not_applicable", {}).items():
                text += f"\n\n{arch} {label}: not applicable: {why}"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
