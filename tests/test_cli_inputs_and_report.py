"""sklearn_musc.cli.inputs (input folders, readable images) and sklearn_musc.cli.report (the HTML report) alone."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from sklearn_musc.cli.errors import InputError
from sklearn_musc.cli.inputs import RUN_MANIFEST, check_readable, collect_images, display_name
from sklearn_musc.cli.report import render_report


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5, 3), value, np.uint8)).save(path)
    return path


def test_collect_images_skips_hidden_output_and_earlier_runs(tmp_path):
    root = tmp_path / "in"
    keep = [_png(root / "b.png"), _png(root / "a" / "z.jpg"), _png(root / "sub" / "c.PNG")]
    _png(root / ".hidden.png")
    _png(root / ".ipynb_checkpoints" / "x.png")
    _png(root / "out" / "y.png")  # the output folder, inside the input
    (root / "old").mkdir()
    (root / "old" / RUN_MANIFEST).write_text(json.dumps({"files": []}))
    _png(root / "old" / "overlays" / "q.png")  # an earlier run's outputs
    (root / "notes.txt").write_text("not an image")
    found = collect_images(root, out=root / "out")
    assert [display_name(p, root) for p in found] == ["a/z.jpg", "b.png", "sub/c.PNG"]
    assert sorted(found) == sorted(keep)


@pytest.mark.parametrize("make, match", [
    (lambda t: t / "missing", "does not exist"),
    (lambda t: _png(t / "f.png"), "is not a folder"),
])
def test_collect_images_refuses_what_is_not_a_folder(tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        collect_images(make(tmp_path))


def test_collect_images_refuses_the_input_as_output(tmp_path):
    with pytest.raises(InputError, match="is the input folder itself"):
        collect_images(tmp_path, out=tmp_path)


def test_check_readable_names_each_bad_file_and_why(tmp_path):
    good = _png(tmp_path / "good.png", 7)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-20])
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    bad = check_readable([good, truncated, fake])
    assert [b.path for b in bad] == [truncated, fake]
    assert "not an image" in bad[1].reason and bad[0].reason


def test_display_name_is_posix_and_valid_utf8(tmp_path):
    import os

    name = os.fsdecode(b"bad\xff.png")
    assert display_name(tmp_path / "sub" / name, tmp_path) == "sub/bad\ufffd.png"


def _summary(scores, labels, overlay=True):
    return {
        "n_images": len(scores), "n_anomalous": int(sum(lab == "anomalous" for lab in labels)),
        "threshold": 0.5, "settings": {"backbone": "timm:x", "device": "cpu"},
        "versions": {"sklearn_musc": "9.9"}, "created": "now",
        "skipped": [{"path": "<b>bad.png", "reason": "truncated"}],
        "images": [dict(path=f"dir/im{i} <&>.png", score=s, label=lab, msm_score=s, original_size=[4, 5],
                        overlay=f"overlays/im{i}.png" if overlay else None)
                   for i, (s, lab) in enumerate(zip(scores, labels))],
    }


def test_report_rows_sorted_by_score_escaped_and_counted():
    page = render_report(_summary([0.2, 0.9, None, 0.6], ["normal", "anomalous", "normal", "anomalous"]))
    rows = re.findall(r'<tr class="image (\w+)" data-score="([^"]+)">', page)
    assert [s for _, s in rows] == ["0.9", "0.6", "0.2", "None"]  # highest first, a missing score last
    assert "2 anomalous, 2 normal" in page and "Anomaly scores of 4 images" in page
    assert "<&>" not in page and "im1 &lt;&amp;&gt;.png" in page  # paths are escaped
    assert "&lt;b&gt;bad.png" in page and "Skipped: 1 unreadable" in page
    assert "device" not in page and "backbone=timm:x" in page  # only the settings that define the scores
    assert page.count('<img src="overlays/') == 4


def test_report_without_overlays_has_no_images():
    page = render_report(_summary([0.1, 0.3], ["normal", "normal"], overlay=False))
    assert "<img" not in page and "0 anomalous, 2 normal" in page
