"""The report's charts are real PNG files whose content follows the data (matplotlib, no display)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import matplotlib.image as mpimg
import numpy as np

from edgehub.hub.report.build import ProfileSection, ReportData, RolloutSection, VariantPoint
from edgehub.hub.report.charts import latency_accuracy_chart, rollout_chart, sizes_chart

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _point(label, size, acc=None, p50=None, pareto=False):
    return VariantPoint(variant_id=f"m-1-{label}", label=label, precision=label, format="onnx", size_bytes=size,
                        accuracy=acc, p50_ms=p50, pareto=pareto, selected_by=3 if label == "int8" else 0)


def _pixels(path):
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_latency_accuracy_chart(tmp_path):
    section = ProfileSection(profile="x86-cpu", selected="m-1-int8", variants=[
        _point("fp32", 400_000, 0.91, 2.0, pareto=True), _point("int8", 110_000, 0.905, 0.9, pareto=True),
        _point("fp16", 200_000, 0.90, 2.5)])
    empty = ProfileSection(profile="rpi5", variants=[_point("fp32", 400_000)])
    a = _pixels(latency_accuracy_chart(section, tmp_path / "a.png"))
    b = _pixels(latency_accuracy_chart(empty, tmp_path / "b.png"))
    # The measured chart draws points and a front; the empty one only its frame and a note.
    assert (a[..., :3] < 0.9).mean() > (b[..., :3] < 0.9).mean()


def test_sizes_chart_has_a_bar_per_variant(tmp_path):
    points = [_point("fp32", 400_000), _point("int8", 110_000)]
    data = ReportData(model="m", version=1, generated_at=T0,
                      profiles=[ProfileSection(profile="a", variants=points),
                                ProfileSection(profile="b", variants=points[:1])], rollouts=[])
    one = _pixels(sizes_chart(data, tmp_path / "two.png"))
    data.profiles = [ProfileSection(profile="a", variants=[_point(f"v{i}", 1000 * (i + 1)) for i in range(8)])]
    many = _pixels(sizes_chart(data, tmp_path / "eight.png"))
    assert many.shape[0] > one.shape[0]  # the figure grows with the number of variants


def test_rollout_chart(tmp_path):
    timeline = [(T0 + timedelta(minutes=i), "activated" if i % 5 else "failed") for i in range(20)]
    section = RolloutSection(id=3, group="profile:x86-cpu", status="running", stage=1, stages=3, reason="",
                             members=25, timeline=timeline, transitions=[(T0, "running", 0),
                                                                         (T0 + timedelta(minutes=10), "running", 1)])
    image = _pixels(rollout_chart(section, tmp_path / "r.png"))
    red = (image[..., 0] > 0.7) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)
    green = (image[..., 1] > 0.5) & (image[..., 0] < 0.3)
    assert red.any() and green.any()  # both failed and activated steps are drawn
    assert np.isfinite(image).all()
