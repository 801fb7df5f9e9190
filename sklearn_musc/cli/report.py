"""The static HTML report of a scoring run (``report.html``).

One self-contained file (inline CSS and SVG, no script, nothing fetched) that
refers to the overlay PNGs beside it: a score histogram with the threshold,
then one table row per image, most anomalous first.
"""

from __future__ import annotations

import html
from urllib.parse import quote

import numpy as np

__all__ = ["render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} .meta{color:#555;margin:.2em 0}
table{border-collapse:collapse;margin-top:1em} th,td{padding:.35em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle} th{background:#f3f3f3} td.num{text-align:right;
font-variant-numeric:tabular-nums} tr.anomalous td.label{color:#b00020;font-weight:600}
tr.normal td.label{color:#1b5e20} img{max-width:160px;max-height:160px;display:block}
.path{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-all;max-width:28em}
.skipped{color:#8a4b00}
"""


def _fmt(x):
    return "n/a" if x is None else f"{x:.4f}"


def _histogram(scores, threshold, width=640, height=180, bins=20):
    """An inline SVG histogram of ``scores`` with a vertical line at ``threshold``."""
    values = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    lo = min([values.min()] + ([threshold] if threshold is not None else [])) if values.size else 0.0
    hi = max([values.max()] + ([threshold] if threshold is not None else [])) if values.size else 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    left, right, top, bottom = 40, 10, 10, 30
    pw, ph = width - left - right, height - top - bottom
    peak = max(1, int(counts.max()) if counts.size else 1)

    def x(v):
        return left + (v - lo) / (hi - lo) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="histogram of the image scores">',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>']
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            h = c / peak * ph
            parts.append(f'<rect class="bar" x="{x(a):.1f}" y="{top + ph - h:.1f}" '
                         f'width="{max(1.0, x(b) - x(a) - 1):.1f}" height="{h:.1f}" fill="#4a78b5">'
                         f'<title>{int(c)} images in [{a:.3f}, {b:.3f})</title></rect>')
    for v, anchor in ((lo, "start"), (hi, "end")):
        parts.append(f'<text x="{x(v):.1f}" y="{height - 10}" font-size="11" '
                     f'text-anchor="{anchor}">{v:.3f}</text>')
    parts.append(f'<text x="{left - 5}" y="{top + 10}" font-size="11" text-anchor="end">{peak}</text>')
    if threshold is not None:
        tx = x(threshold)
        parts.append(f'<line class="threshold" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" '
                     f'y2="{top + ph}" stroke="#b00020" stroke-width="2" stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{tx + 4:.1f}" y="{top + 12}" font-size="11" fill="#b00020">'
                     f'threshold {threshold:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(summary):
    """The HTML text of the report, from the dict written to ``summary.json``."""
    images = sorted(summary["images"], key=lambda r: -(r["score"] if r["score"] is not None
                                                        else -np.inf))
    esc = html.escape
    n, flagged = summary["n_images"], summary["n_anomalous"]
    settings = summary.get("settings") or {}
    setting_text = ", ".join(f"{k}={v}" for k, v in settings.items()
                             if k in ("backbone", "weights", "image_size", "preset", "r_list", "k_list",
                                      "contamination"))
    with_p = any("pvalue" in r for r in images)
    rows = []
    for rank, r in enumerate(images, 1):
        picture = ""
        if r.get("overlay"):
            src = quote(r["overlay"])
            picture = (f'<a href="{esc(src)}"><img src="{esc(src)}" loading="lazy" '
                       f'alt="overlay of {esc(r["path"])}"></a>')
        h, w = r["original_size"]
        unseen = f", {100 * r['cut_away']:.1f} % not seen" if r.get("cut_away") else ""
        rows.append(
            f'<tr class="image {esc(r["label"])}" data-score="{r["score"]!r}">'
            f'<td class="num">{rank}</td><td class="path">{esc(r["path"])}<br>'
            f'<small>{w} x {h} px{unseen}</small></td><td class="num score">{_fmt(r["score"])}</td>'
            f'<td class="label">{esc(r["label"])}</td><td class="num">{_fmt(r["msm_score"])}</td>'
            + (f'<td class="num pvalue">{_fmt(r.get("pvalue"))}</td>' if with_p else "")
            + f'<td>{picture}</td></tr>'
        )
    skipped = ""
    if summary.get("skipped"):
        items = "".join(f"<li><span class=\"path\">{esc(s['path'])}</span>: {esc(s['reason'])}</li>"
                        for s in summary["skipped"])
        skipped = (f'<h2>Skipped: {len(summary["skipped"])} unreadable</h2>'
                   f'<ul class="skipped">{items}</ul>')
    threshold = summary.get("threshold")
    version = summary.get("versions", {}).get("sklearn_musc", "")
    decision = ""
    if summary.get("decision"):
        d = summary["decision"]
        decision = f'<p class="meta decision">Labels: {esc(d.get("text", ""))}</p>'
    drift = ""
    if summary.get("drift"):
        d = summary["drift"]
        if d["alarm"]:
            drift = (f'<p class="meta drift alarm"><strong>Drift alarm</strong>: the parts stopped being '
                     f'exchangeable at part {d["alarm_index"] + 1} of {d["parts_seen"]} (in name order; '
                     f'martingale {d["martingale_max"]:.3g} &ge; {1 / d["level"]:.3g}, false-alarm '
                     f'level {d["level"]:g}): check the line and the pool.</p>')
        else:
            drift = (f'<p class="meta drift">No drift alarm over {d["parts_seen"]} parts (largest martingale '
                     f'{d["martingale_max"]:.3g} &lt; {1 / d["level"]:.3g}, false-alarm level {d["level"]:g}).</p>')
    crop = summary.get("crop") or {}
    cropped = ""
    if crop.get("images_cut"):
        cropped = (f'<p class="meta crop alarm"><strong>Not seen</strong>: crop mode {esc(repr(crop["mode"]))} cut '
                   f'away {100 * crop["pixels_cut"]:.1f} % of the pixels of {crop["images_cut"]} of {n} images; '
                   "the model never saw them, so a defect there cannot be found (crop mode 'auto' shows whole "
                   "images).</p>")
    elif crop:
        cropped = (f'<p class="meta crop">Crop mode {esc(repr(crop["mode"]))}: every pixel of every image '
                   "was seen by the model.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>sklearn-musc report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Anomaly scores of {n} images</h1>"
        f'<p class="meta">{flagged} anomalous, {n - flagged} normal; threshold '
        f'{_fmt(threshold)}. Overlays share one colour scale.</p>'
        f"{decision}{drift}{cropped}"
        f'<p class="meta">{esc(setting_text)}</p>'
        f'<p class="meta">sklearn-musc {esc(version)}, {esc(str(summary.get("created", "")))}</p>'
        f"{_histogram([r['score'] for r in images], threshold)}"
        f"{skipped}"
        "<table><thead><tr><th>#</th><th>image</th><th>score</th><th>label</th>"
        "<th>detector score</th>" + ("<th>p-value</th>" if with_p else "") + "<th>overlay</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>\n"
    )
