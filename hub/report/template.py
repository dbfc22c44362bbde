"""The report page: one self-contained HTML file next to its PNG charts (jinja2, autoescaped)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jinja2 import Environment, select_autoescape

if TYPE_CHECKING:
    from edgehub.hub.report.build import ReportData

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ d.model }} v{{ d.version }}: edgehub report</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
 table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
 th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 tr.selected { background: #fde7e7; font-weight: bold; }
 .badge { display: inline-block; padding: 0.1em 0.5em; border-radius: 0.3em; background: #f0ad4e; color: #000; }
 img { max-width: 100%; border: 1px solid #eee; }
</style>
</head>
<body>
<h1 id="title">{{ d.model }} v{{ d.version }}</h1>
<p>Generated {{ d.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC") }} by edgehub.
{% if d.simulated %}<span class="badge" id="simulated">simulated</span> Some numbers come from simulated
devices (runtime "simulated"): they follow a declared synthetic distribution, not a measurement.{% endif %}</p>

{% for s in d.profiles %}
<section class="profile" data-profile="{{ s.profile }}">
<h2>{{ s.profile }}{% if s.simulated %} <span class="badge">simulated</span>{% endif %}</h2>
<img class="chart" src="{{ s.chart }}" alt="latency vs accuracy on {{ s.profile }}">
<table>
<tr><th>variant</th><th>precision</th><th>size KB</th><th>{{ s.variants[0].accuracy_kind if s.variants else "accuracy" }}</th>
<th>p50 ms (median)</th><th>devices ok</th><th>failed</th><th>selected by</th><th>Pareto</th></tr>
{% for p in s.variants %}
<tr class="{{ 'selected' if p.variant_id == s.selected else '' }}" data-variant="{{ p.variant_id }}">
<td>{{ p.label }}</td><td>{{ p.precision }}</td><td>{{ "%.1f"|format(p.size_bytes / 1024) }}</td>
<td>{{ "%.4f"|format(p.accuracy) if p.accuracy is not none else "-" }}</td>
<td>{{ "%.3f"|format(p.p50_ms) if p.p50_ms is not none else "-" }}</td>
<td>{{ p.devices }}</td><td>{{ p.failed }}</td><td>{{ p.selected_by }}</td><td>{{ "yes" if p.pareto else "" }}</td>
</tr>
{% endfor %}
</table>
</section>
{% endfor %}

<section id="sizes">
<h2>Size per variant</h2>
<img class="chart" src="{{ d.sizes_chart }}" alt="size per variant">
</section>

<section id="rollouts">
<h2>Rollouts</h2>
{% if not d.rollouts %}<p>No rollout of this version yet.</p>{% endif %}
{% for r in d.rollouts %}
<h3>#{{ r.id }} on {{ r.group }}: {{ r.status }} (stage {{ r.stage + 1 }} of {{ r.stages }}, {{ r.members }} devices)</h3>
<p>{{ r.reason }}</p>
<img class="chart" src="{{ r.chart }}" alt="progress of rollout {{ r.id }}">
{% endfor %}
</section>
<script>
 // Lets a headless browser (and a person) see at once whether every chart loaded.
 window.addEventListener("load", function () {
   var imgs = Array.prototype.slice.call(document.images);
   document.body.dataset.charts = imgs.length;
   document.body.dataset.chartsLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
 });
</script>
</body>
</html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_TEMPLATE = _ENV.from_string(PAGE)


def render(data: ReportData) -> str:
    return _TEMPLATE.render(d=data)
