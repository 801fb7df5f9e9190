"""Progress bars of the long stages: updates with the time left when on, nothing when off."""

import re

import numpy as np
import pytest
import torch
from joblib import parallel_config

from _helpers import make_tokens, unit_features
from sklearn_musc import LNAMDTransformer, MutualScoringDetector, ViTPatchTransformer, _msm, _progress

TINY_VIT = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56, device="cpu",
                backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), random_state=0)


@pytest.fixture
def at_once(monkeypatch):
    """Bars show from the first update (by default only once a stage has run for a second)."""
    monkeypatch.setattr(_progress, "DELAY", 0.0)


def run_every_stage(rng, progress, n_jobs=None):
    images = rng.integers(0, 256, size=(5, 56, 56, 3), dtype=np.uint8)
    tokens = ViTPatchTransformer(batch_size=2, progress=progress, **TINY_VIT).fit_transform(images)
    feats = LNAMDTransformer(r_list=(1, 3), batch_size=2, device="cpu", progress=progress).fit_transform(tokens)
    det = MutualScoringDetector(novelty=True, device="cpu", progress=progress).fit(feats)
    det.score_samples(feats)
    with parallel_config(backend="threading"):  # workers: the bar advances by whole subsets
        MutualScoringDetector(n_subsets=2, random_state=0, n_jobs=n_jobs, device="cpu", progress=progress).fit(feats)
    # conformal calibration of a pool scored in subsets, references' scores, parts added to a pool
    split = MutualScoringDetector(novelty=True, n_subsets=2, random_state=0, device="cpu", progress=progress)
    split.fit(feats).partial_fit(feats.take(np.arange(2)))
    MutualScoringDetector(device="cpu", progress=progress).fit(feats, references=feats.take(np.arange(2)))


def final_counts(err, desc):
    """``(done, total)`` of the last update of the bar ``desc``, and whether it showed the time left."""
    updates = re.findall(rf"{desc}:\s+\d+%\|[^|]*\| (\d+)/(\d+) \[\d\d:\d\d<(\d\d:\d\d|\?)", err)
    assert updates, f"no update of {desc!r} in:\n{err}"
    return tuple(int(v) for v in updates[-1][:2])


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_every_long_stage_shows_progress_with_the_time_left(rng, capsys, at_once, n_jobs):
    run_every_stage(rng, True, n_jobs)
    err = capsys.readouterr().err
    assert final_counts(err, "ViT forward") == (5, 5)
    assert final_counts(err, "LNAMD") == (5, 5)
    # 5 images, 2 feature sets: 10 pairs per set; subsets of 3 and 2: 3 + 1 pairs per set; with 2
    # references: 10 + 5 x 2 pairs per set
    ends = set(re.findall(r"mutual scoring:\s+100%.*?(\d+)/(\d+) \[", err))
    assert ends == {("20", "20"), ("8", "8"), ("40", "40")}
    assert final_counts(err, "novelty scoring") == (50, 50)  # 2 sets x 5 new x 5 pool images
    assert final_counts(err, "pool calibration") == (20, 20)  # 2 sets x 10 pairs of the pool
    assert final_counts(err, "adding to the pool") == (42, 42)  # 2 sets x (2 x 5 x 2 + 1)
    assert final_counts(err, "reference scores") == (22, 22)  # 2 sets x (1 + 2 x 5)


def test_no_progress_writes_nothing(rng, capsys, at_once):
    run_every_stage(rng, False)
    assert capsys.readouterr().err == ""


def test_stages_shorter_than_the_delay_stay_quiet(rng, capsys, monkeypatch):
    assert _progress.DELAY == 1.0  # the default: bars show once a stage has run for a second
    monkeypatch.setattr(_progress, "DELAY", 600.0)
    run_every_stage(rng, True)
    assert capsys.readouterr().err == ""


def test_kernels_report_every_pair_once(rng):
    Z = torch.as_tensor(unit_features(rng, n=9, L=12, C=16))
    plan = _msm.Plan(9, 12, 16, 4, torch.device("cpu"), budget=4 * (9 * 9 * 12 + 3 * 9 * 4 * 12) + 20_000)
    assert plan.block < 9  # several tiles
    counts = []
    _msm.max_similarity_table(Z, plan, progress=counts.append)
    assert len(counts) > 1 and sum(counts) == 9 * 8 // 2
    P = torch.as_tensor(unit_features(rng, n=5, L=12, C=16))
    counts = []
    _msm.cross_similarity_table(Z, P, _msm.Plan(9, 12, 16, 4, torch.device("cpu"), 10**8, n_cols=5),
                                progress=counts.append)
    assert sum(counts) == 9 * 5


def test_progress_parameter_is_a_boolean(rng):
    with pytest.raises(ValueError, match="progress"):
        MutualScoringDetector(progress="yes").fit(make_tokens(rng)[:, :1])
    with pytest.raises(ValueError, match="progress"):
        LNAMDTransformer(progress=1).fit(make_tokens(rng))
