"""The publish / zoo variant table: the near-tie agreement the gate reads is shown when it matters;
the lineage line of each variant says what its last step chose."""

from __future__ import annotations

from rich.console import Console

from edgehub.hub.cli.variant_views import step_summary, variants_table
from edgehub.zoo.records import VariantRecord


def _variant(label: str, size: int, parent: str | None = None, **metrics: float | None) -> VariantRecord:
    return VariantRecord(id=f"m-1-{label}", model="m", version=1, parent=parent, label=label, profiles=["x86-cpu"],
                         recipe=[], format="onnx", precision="fp32" if parent is None else "int8", size_bytes=size,
                         sha256="0" * 64, inputs=[], outputs=[], metrics=metrics)


def _render(variants: list[VariantRecord]) -> str:
    console = Console(width=200, record=True)
    console.print(variants_table(variants))
    return console.export_text()


def test_unlabeled_classifier_shows_agreement_with_and_without_near_ties():
    text = _render([_variant("fp32", 4000, agreement=1.0, near_tie_agreement=1.0),
                    _variant("int8-static", 1000, "m-1-fp32", agreement=0.9567, near_tie_agreement=0.9967)])
    assert "with near-ties" in text
    row = next(line for line in text.splitlines() if "int8-static" in line)
    assert "95.67%" in row and "99.67%" in row and "0.25x" in row


def test_labelled_eval_sets_keep_the_plain_columns():
    text = _render([_variant("fp32", 4000, accuracy=0.9, agreement=1.0, near_tie_agreement=1.0),
                    _variant("int8-static", 1000, "m-1-fp32", accuracy=0.89, agreement=0.98, near_tie_agreement=0.99)])
    assert "with near-ties" not in text and "89.00%" in text


def test_the_tflite_int8_step_says_what_its_search_kept():
    search = {"observer": "minmax", "bias_correction": {"kept": True, "layers": 65},
              "rounding": {"kept": True, "layers": 65}}
    summary = step_summary({"pass": "tflite", "notes": {"int8_search": search}})
    assert summary == "full int8, minmax observer, bias correction, rounding"
    search["rounding"] = {"kept": False, "why": "no held-back samples to measure it on"}
    assert step_summary({"pass": "tflite", "notes": {"int8_search": search}}).endswith("bias correction")
    assert step_summary({"pass": "tflite", "notes": {}}) == ""  # fp32 / fp16 TFLite: nothing to say
