"""The output writer of the command line, fed a ScoreResults directly (no model)."""

import json
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sklearn_musc.cli.outputs import OutputFolder, ScoreResults
from sklearn_musc.geometry import maps_to_original, masks_to_original
from sklearn_musc.plotting import anomaly_map_rgb


def _results(tmp_path, n=5, sizes=None, masks=None):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    sizes = sizes or [(30 + 7 * i, 40 + 3 * i) for i in range(n)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / ("sub" if i % 2 else "") / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    scores = rng.random(n)
    labels = np.where(scores > 0.7, -1, 1)
    return ScoreResults(
        paths=paths, names=[p.relative_to(folder).as_posix() for p in paths], scores=scores,
        labels=labels, detector_scores=scores * 2, threshold=0.7,
        anomaly_maps=rng.random((n, 16, 16)).astype(np.float32), original_sizes=sizes,
        input_size=(16, 16), masks=masks, settings={"backbone": "timm:test"}, timings={"vit": 1.0},
    )


class _Report(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.images, self.in_score, self.svg = [], [], False, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "image" in attrs.get("class", "").split():
            self.rows.append({"score": None, "class": attrs["class"]})
        if tag == "td" and "score" in attrs.get("class", "").split():
            self.in_score = True
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "svg":
            self.svg += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self.in_score = False

    def handle_data(self, data):
        if self.in_score:
            self.rows[-1]["score"] = float(data)


def test_the_report_refers_to_existing_pngs_one_row_per_image_sorted_by_score(tmp_path):
    from urllib.parse import unquote

    results = _results(tmp_path)
    out = tmp_path / "out"
    OutputFolder(out).write(results)
    parser = _Report()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert len(parser.rows) == len(results.names) == len(parser.images)
    scores = [r["score"] for r in parser.rows]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(sorted(results.scores, reverse=True), abs=1e-4)
    for src in parser.images:
        assert (out / unquote(src)).is_file() and src.endswith(".png")
    assert parser.svg == 1  # the histogram
    assert sum("anomalous" in r["class"] for r in parser.rows) == results.n_anomalous


def test_masks_are_written_and_outlined(tmp_path):
    n = 4
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[:, 4:12, 4:12] = True
    results = _results(tmp_path, n=n, masks=masks)
    out = tmp_path / "out"
    files = OutputFolder(out).write(results)
    summary = json.loads((out / "summary.json").read_text())
    for entry, size in zip(summary["images"], results.original_sizes):
        assert entry["mask"] == f"masks/{entry['path']}.png" and entry["mask"] in files
        mask = np.asarray(Image.open(out / entry["mask"]))
        assert mask.shape == size and set(np.unique(mask)) == {0, 255}
        overlay = np.asarray(Image.open(out / entry["overlay"]))
        white = (overlay == 255).all(axis=2)
        edge = mask > 0
        assert white[edge].any() and not white[~edge].any()  # the outline lies on the mask
    # masks at the original size are taken as they are
    masks = [np.ones(s, dtype=bool) for s in results.original_sizes]
    OutputFolder(tmp_path / "out2").write(_results(tmp_path / "b", n=n, masks=masks), overlays=False)
    assert (np.asarray(Image.open(tmp_path / "out2" / "masks" / "im0.png.png")) == 255).all()


def test_without_masks_no_mask_folder(tmp_path):
    out = tmp_path / "out"
    OutputFolder(out).write(_results(tmp_path))
    assert not (out / "masks").exists()
    assert json.loads((out / "summary.json").read_text())["images"][0]["mask"] is None


def test_a_failure_while_writing_leaves_the_folder_untouched(tmp_path, monkeypatch):
    from sklearn_musc.cli import outputs as _outputs

    out = tmp_path / "out"
    first = _results(tmp_path)
    OutputFolder(out).write(first)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(_outputs, "_versions", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        OutputFolder(out, overwrite=True).write(first)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_the_overlay_pngs_are_anomaly_map_rgb_with_the_input_geometry(tmp_path):
    """One renderer: each overlays/*.png is plotting.anomaly_map_rgb of the map placed where the model saw it."""
    results = _results(tmp_path, n=3, sizes=[(30, 60), (45, 31), (32, 32)])
    results.masks = [np.random.default_rng(i).random((16, 16)) > 0.6 for i in range(3)]
    out = tmp_path / "out"
    OutputFolder(out).write(results)
    vmin, vmax = float(results.anomaly_maps.min()), float(results.anomaly_maps.max())
    for i, name in enumerate(results.names):
        image = Image.open(results.paths[i]).convert("RGB")
        png = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        mask = masks_to_original([results.masks[i]], [results.original_sizes[i]], (16, 16))[0]
        expected = anomaly_map_rgb(image, results.anomaly_maps[i], vmin, vmax, mask=mask, input_size=(16, 16))
        np.testing.assert_array_equal(png, expected)
        # the map covers the centre crop the model saw, as maps_to_original places it
        full = maps_to_original(results.anomaly_maps[i][None], [results.original_sizes[i]], (16, 16))[0]
        stretched = anomaly_map_rgb(image, full, vmin, vmax, mask=mask).astype(int)
        assert np.percentile(np.abs(png.astype(int) - stretched), 99) <= 4  # within a colour step or two
        if results.original_sizes[i][0] != results.original_sizes[i][1]:  # not square: stretching differs
            unplaced = anomaly_map_rgb(image, results.anomaly_maps[i], vmin, vmax).astype(int)
            assert np.abs(png.astype(int) - unplaced).max() > 20


def test_overlay_memory_is_bounded_for_a_large_photo(tmp_path):
    # 4000 x 4000: the old float64 path needed several 384 MB arrays at once.
    script = textwrap.dedent(f"""
        import resource, numpy as np
        from PIL import Image
        from sklearn_musc.plotting import anomaly_map_rgb
        y, x = np.mgrid[0:4000, 0:4000]
        img = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save({str(tmp_path / 'big.png')!r})
        del img, x, y
        image = Image.open({str(tmp_path / 'big.png')!r}).convert("RGB")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = Image.fromarray(anomaly_map_rgb(image, np.random.rand(32, 32).astype(np.float32), 0.0, 1.0,
                                              input_size=(32, 32)))
        out.save({str(tmp_path / 'o.png')!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    extra_mb = int(result.stdout.split()[-1])
    assert extra_mb < 200, extra_mb  # 48 MB output array, 64 MB float32 map, then 64 MB PNG image; bands


def test_overlay_pngs_are_the_same_bytes_with_and_without_matplotlib(tmp_path):
    """The overlays' colours are the built-in jet: an optional dependency never changes an output."""
    import os
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    code = """
import io, sys
if sys.argv[1] == "blocked":
    sys.modules["matplotlib"] = None  # import matplotlib raises ImportError
import numpy as np
from PIL import Image
from sklearn_musc.cli.outputs import OutputFolder, ScoreResults
from sklearn_musc.plotting import anomaly_map_rgb
rng = np.random.default_rng(0)
image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
amap = rng.random((16, 16)).astype(np.float32)
mask = amap > 0.7
out = io.BytesIO()
Image.fromarray(anomaly_map_rgb(image, amap, 0.1, 0.9, mask=mask, input_size=(16, 16))).save(out, format="PNG")
Image.fromarray(anomaly_map_rgb(image, amap, 0.1, 0.9, mask=mask)).save(out, format="PNG")
image.save(sys.argv[2] + ".in.png")
results = ScoreResults(paths=[sys.argv[2] + ".in.png"], names=["x.png"], scores=[1.0], labels=[-1],
                       detector_scores=[1.0], threshold=0.5, anomaly_maps=amap[None], original_sizes=[(37, 53)],
                       input_size=(16, 16), masks=[mask])
OutputFolder(sys.argv[2] + ".out").write(results, report=False)  # the command line's writer
out.write(open(sys.argv[2] + ".out/overlays/x.png.png", "rb").read())
assert ("matplotlib" in sys.modules and sys.modules["matplotlib"] is None) == (sys.argv[1] == "blocked")
open(sys.argv[2], "wb").write(out.getvalue())
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    outputs = {}
    for mode in ("blocked", "installed"):
        target = tmp_path / f"{mode}.bin"
        subprocess.run([sys.executable, "-c", code, mode, str(target)], env=env, check=True, timeout=300)
        outputs[mode] = target.read_bytes()
    assert len(outputs["blocked"]) > 1000
    assert outputs["blocked"] == outputs["installed"]
