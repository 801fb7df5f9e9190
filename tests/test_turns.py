"""Turned copies of the other images as extra scorers (issue 23, "Orientation").

``ViTPatchTransformer(turns=...)`` passes each model input also turned or
mirrored through the ViT; ``LNAMDTransformer`` aggregates the copies like the
images; ``MutualScoringDetector`` scores each patch against every other image
*and that image's copies*, never against its own image or its copies. The
float64 loops of ``_reference.scored_by`` are the reference: a scorer image
is simply its own patches followed by its copies' patches.
"""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

import _reference as ref
from sklearn_musc import LNAMDTransformer, MutualScoringDetector, ViTPatchTransformer
from sklearn_musc._batch import FeatureSets, PatchTokens
from sklearn_musc.features import TURNS, turn_input

TINY_VIT = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=28,
                backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), device="cpu", progress=False,
                random_state=0, dtype="float32")
NAMES = ("rot90", "flip")


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def random_sets(rng, n=8, n_sets=2, h=3, w=4, C=12, turns=NAMES):
    """A 'product' with turned copies: a shared pattern plus noise, images and copies alike."""
    base = rng.normal(size=(1, 1, n_sets, h, w, C))
    both = unit(base + 0.9 * rng.normal(size=(n, 1 + len(turns), n_sets, h, w, C)))
    return FeatureSets(features=np.ascontiguousarray(both[:, 0]), set_index=tuple((s, 0) for s in range(n_sets)),
                       turned=np.ascontiguousarray(both[:, 1:]), turns=turns)


def unit64(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def scorer(X, j, s):
    """Image ``j`` of set ``s`` as a scorer: its patches, then those of each of its copies (L', C) float64."""
    C = X.features.shape[-1]
    parts = [X.features[j, s].reshape(-1, C)] + [X.turned[j, t, s].reshape(-1, C) for t in range(len(X.turns))]
    return unit64(np.concatenate(parts))


def expected(X, scored, scorers_of, scorer_sets=None, **kw):
    """Per-set float64 patch scores (len(scored), n_sets, h, w): ``scored_by`` with copies joined to the scorers."""
    scorer_sets = X if scorer_sets is None else scorer_sets
    n, n_sets, h, w, C = X.features.shape
    out = np.zeros((len(scored), n_sets, h * w))
    for k, i in enumerate(scored):
        for s in range(n_sets):
            image = unit64(X.features[i, s].reshape(-1, C))
            out[k, s] = ref.scored_by(image, [scorer(scorer_sets, j, s) for j in scorers_of(i)], **kw)
    return out.reshape(len(scored), n_sets, h, w)


# ------------------------------------------------------------------ the detector against the float64 loops

@pytest.mark.parametrize("topmin", [(0.0, 0.2), (0.0, 0.5), (0.2, 0.7), (0.0, 1.0)])
def test_batch_scores_equal_the_loop_reference(rng, topmin):
    X = random_sets(rng)
    det = MutualScoringDetector(topmin_min=topmin[0], topmin_max=topmin[1], device="cpu", progress=False).fit(X)
    want = expected(X, range(8), lambda i: [j for j in range(8) if j != i],
                    topmin_min=topmin[0], topmin_max=topmin[1])
    assert np.abs(det.set_patch_scores_ - want).max() < 1e-5
    assert det.turns_ == NAMES
    # the copies matter here: without them the scores are another thing
    plain = MutualScoringDetector(topmin_min=topmin[0], topmin_max=topmin[1], device="cpu", progress=False)
    plain.fit(FeatureSets(features=X.features, set_index=X.set_index))
    assert plain.turns_ == () and np.abs(plain.set_patch_scores_ - want).max() > 1e-2


def test_min_reduction_subsets_and_float16_features(rng):
    X = random_sets(rng, n=9)
    det = MutualScoringDetector(reduction="min", device="cpu", progress=False).fit(X)
    want = expected(X, range(9), lambda i: [j for j in range(9) if j != i], reduction="min")
    assert np.abs(det.set_patch_scores_ - want).max() < 1e-5
    det = MutualScoringDetector(n_subsets=2, random_state=0, device="cpu", progress=False).fit(X)
    for idx in det.subsets_:
        want = expected(X, idx, lambda i, idx=idx: [j for j in idx if j != i])
        assert np.abs(det.set_patch_scores_[idx] - want).max() < 1e-5
    half = FeatureSets(features=X.features.astype(np.float16), set_index=X.set_index,
                       turned=X.turned.astype(np.float16), turns=X.turns)
    det = MutualScoringDetector(device="cpu", progress=False).fit(half)
    want = expected(half, range(9), lambda i: [j for j in range(9) if j != i])
    assert np.abs(det.set_patch_scores_ - want).max() < 1e-5


def test_tiles_streamed_from_the_host_give_the_same_scores(rng):
    X = random_sets(rng, n=10, h=4, w=4)
    whole = MutualScoringDetector(device="cpu", progress=False).fit(X).set_patch_scores_
    # room for the table and small product tiles, not for the features: streamed in tiles
    from sklearn_musc import _msm

    plan = _msm.Plan(10, 16, 12, 1, torch.device("cpu"), 40_000, n_turns=2)
    assert not plan.resident and plan.block < 10
    streamed = MutualScoringDetector(device="cpu", progress=False, memory_budget=40_000).fit(X).set_patch_scores_
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    # and a pool scoring new images in tiles
    pool = MutualScoringDetector(novelty=True, device="cpu", progress=False).fit(X.take(range(7)))
    want = pool.score_samples(X.take(range(7, 10)))
    assert not _msm.Plan(3, 16, 12, 1, torch.device("cpu"), 12_000, n_cols=7, n_turns=2).resident
    np.testing.assert_allclose(pool.set_params(memory_budget=12_000).score_samples(X.take(range(7, 10))), want,
                               atol=1e-6)


def test_references_with_copies_join_the_scorers(rng):
    X = random_sets(rng, n=9)
    batch, refs = X.take(range(6)), X.take(range(6, 9))
    det = MutualScoringDetector(topmin_max=0.5, device="cpu", progress=False).fit(batch, references=refs)
    want = expected(X, range(6), lambda i: [j for j in range(9) if j != i], topmin_max=0.5)
    assert np.abs(det.set_patch_scores_ - want).max() < 1e-5
    # each reference is scored by the batch and the other references, copies included
    ref_sets = expected(X, range(6, 9), lambda i: [j for j in range(9) if j != i], topmin_max=0.5)
    np.testing.assert_allclose(det.reference_scores_, ref_sets.mean(axis=1).reshape(3, -1).max(axis=1), atol=1e-5)
    with pytest.raises(ValueError, match=r"^the references carry the turned copies None, the batch \('rot90', "):
        det.fit(batch, references=FeatureSets(features=refs.features, set_index=refs.set_index))


@pytest.mark.parametrize("half", [False, True])
def test_novelty_scores_new_images_against_the_pool_and_its_copies(rng, half):
    X = random_sets(rng, n=9)
    if half:
        X = FeatureSets(features=X.features.astype(np.float16), set_index=X.set_index,
                        turned=X.turned.astype(np.float16), turns=X.turns)
    pool, new = X.take(range(6)), X.take(range(6, 9))
    det = MutualScoringDetector(novelty=True, topmin_max=0.5, device="cpu", progress=False).fit(pool)
    assert det.turns_ == NAMES and det.pool_.turns == NAMES
    np.testing.assert_allclose(det.pool_.turned.astype(np.float32), pool.turned.astype(np.float32), atol=1e-3)
    got = det.transform(new).anomaly_maps  # no input size: the maps are the patch scores
    want = expected(X, range(6, 9), lambda i: range(6), topmin_max=0.5).mean(axis=1)
    assert np.abs(got - want).max() < 1e-5
    # the new images' own copies are not used: without them the scores are the same
    bare = FeatureSets(features=new.features, set_index=new.set_index)
    np.testing.assert_array_equal(det.score_samples(bare), det.score_samples(new))
    # the pool's own scores (fit on the batch) use the copies as a batch fit does
    batch = expected(X, range(6), lambda i: [j for j in range(6) if j != i], topmin_max=0.5)
    assert np.abs(det.set_patch_scores_ - batch).max() < 1e-5


def test_workers_and_a_pool_cut_in_parts_keep_each_pool_image_with_its_copies(rng):
    import joblib

    X = random_sets(rng, n=11)
    pool, new = X.take(range(8)), X.take(range(8, 11))
    want = expected(X, range(8, 11), lambda i: range(8)).mean(axis=1).reshape(3, -1).max(axis=1)
    with joblib.parallel_config(backend="threading"):
        det = MutualScoringDetector(novelty=True, device="cpu", n_jobs=2, progress=False).fit(pool)
        many = det.score_samples(new)  # the new images spread over 2 workers
        one = det.score_samples(new.take([1]))  # one image: the pool cut in 2 parts, copies with their images
        batch = MutualScoringDetector(n_subsets=2, random_state=0, n_jobs=2, device="cpu", progress=False).fit(X)
    np.testing.assert_allclose(-many, want, atol=1e-5)
    np.testing.assert_allclose(-one, want[1:2], atol=1e-5)
    for idx in batch.subsets_:
        assert np.abs(batch.set_patch_scores_[idx] - expected(X, idx, lambda i, idx=idx: [j for j in idx if j != i])
                      ).max() < 1e-5


def test_a_pool_grown_with_partial_fit_equals_one_fitted_whole(rng):
    X = random_sets(rng, n=10)
    new = X.take([8, 9])
    whole = MutualScoringDetector(novelty=True, topmin_max=0.5, device="cpu", progress=False).fit(X.take(range(8)))
    grown = MutualScoringDetector(novelty=True, topmin_max=0.5, max_pool_size=20, device="cpu", progress=False)
    grown.fit(X.take(range(5))).partial_fit(X.take(range(5, 8)))
    np.testing.assert_allclose(grown.score_samples(new), whole.score_samples(new), atol=1e-6)
    np.testing.assert_allclose(grown.calibration_scores_, whole.calibration_scores_, atol=1e-6)
    # beyond max_pool_size the oldest images and their copies leave the pool
    small = MutualScoringDetector(novelty=True, topmin_max=0.5, max_pool_size=6, device="cpu", progress=False)
    small.fit(X.take(range(5))).partial_fit(X.take(range(5, 8)))
    last = MutualScoringDetector(novelty=True, topmin_max=0.5, device="cpu", progress=False).fit(X.take(range(2, 8)))
    np.testing.assert_allclose(small.score_samples(new), last.score_samples(new), atol=1e-6)
    with pytest.raises(ValueError, match=r"^the added images carry the turned copies None, the pool"):
        grown.partial_fit(FeatureSets(features=new.features, set_index=new.set_index))


def test_a_one_image_pool_scores_with_its_copies(rng):
    X = random_sets(rng, n=3)
    det = MutualScoringDetector(novelty=True, device="cpu", progress=False).fit(X.take([0]))
    got = det.transform(X.take([1, 2])).anomaly_maps
    assert np.abs(got - expected(X, [1, 2], lambda i: [0]).mean(axis=1)).max() < 1e-5


# ------------------------------------------------------------------ a case where the copies must change the ranking

def test_copies_rank_the_defect_first_not_the_part_lying_the_other_way(rng):
    """Parts at two orientations: without copies the rare orientation ranks first, with them the defect.

    The tokens of a turned part are another pattern (``turned_pattern``), at
    turned grid positions. Eight parts lie one way, one part the other way
    (image 8), and one part lying the common way has a defect (image 9). A
    copy turned by 90 degrees of each part is what that part looks like
    lying the other way, so with the copies the lonely part finds its
    matches; the defect is in its own copies too, which never score it.
    """
    h = w = 4
    C = 24
    pattern = unit(rng.normal(size=(h, w, C)))
    turned_pattern = unit(rng.normal(size=(h, w, C)))  # the same part turned: other tokens

    def part(upright):
        grid = pattern if upright else np.rot90(turned_pattern)
        return grid + 0.05 * rng.normal(size=(h, w, C))

    images = [part(True) for _ in range(8)] + [part(False), part(True)]
    images[9][1, 2] = unit(rng.normal(size=C)) * 1.5  # the defect
    images = unit(np.stack(images))
    # the copy of a part turned by 90 degrees: the other orientation's tokens, positions turned
    copies = np.empty_like(images)
    for i, image in enumerate(images):
        other = np.rot90(turned_pattern) if i != 8 else pattern
        copies[i] = np.rot90(other + 0.05 * rng.normal(size=(h, w, C)))
        if i == 9:  # the defect turns with its part
            copies[i][np.rot90(np.arange(h * w).reshape(h, w)) == 1 * w + 2] = images[9][1, 2]
    copies = unit(copies)
    plain = FeatureSets(features=images[:, None], set_index=((0, 0),))
    turned = FeatureSets(features=images[:, None], set_index=((0, 0),), turned=copies[:, None, None], turns=("rot90",))
    without = MutualScoringDetector(device="cpu", progress=False).fit(plain).anomaly_scores_
    with_copies = MutualScoringDetector(device="cpu", progress=False).fit(turned).anomaly_scores_
    assert np.argsort(-without)[:2].tolist() == [8, 9]  # the part lying the other way first
    assert int(np.argmax(with_copies)) == 9  # the defect first
    assert with_copies[8] < np.sort(with_copies)[-2] + 1e-6  # and the lonely part no longer stands out


def _square_parts(rng, n=9, size=28):
    """Grey images with an asymmetric bar; image ``n - 2`` is turned by 90 degrees, image ``n - 1`` has a spot."""
    images = np.full((n, size, size, 3), 120, dtype=np.uint8)
    images[:, 6:10, 4:24] = 230  # a bar near the top
    images[:, 10:22, 4:8] = 230  # and a leg on the left
    images = np.clip(images + rng.normal(0, 2, images.shape), 0, 255).astype(np.uint8)
    images[n - 2] = np.rot90(images[n - 2])
    images[n - 1, 16:19, 16:19] = 90  # a darker spot
    return images


def test_end_to_end_a_turned_part_is_no_longer_ranked_first(rng):
    """Tiny random ViT, no shared data: with rot90 copies the spot is first, without them the turned part.

    The turned part is an upright one turned by 90 degrees before it is
    given: exactly what the rot90 copies of the upright parts are.
    """
    images = _square_parts(rng)
    scores = {}
    for turns in (None, ("rot90",)):
        vit = ViTPatchTransformer(**dict(TINY_VIT, turns=turns))
        feats = LNAMDTransformer(device="cpu", progress=False, r_list=(1,)).fit_transform(vit.fit_transform(images))
        scores[turns] = MutualScoringDetector(device="cpu", progress=False).fit(feats).anomaly_scores_
    assert int(np.argmax(scores[None])) == 7  # the turned part
    assert int(np.argmax(scores[("rot90",)])) == 8  # the spot


# ------------------------------------------------------------------ the ViT's copies

@pytest.mark.parametrize("turn", TURNS)
def test_copy_tokens_equal_the_tokens_of_the_turned_image(rng, turn):
    images = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    out = ViTPatchTransformer(**dict(TINY_VIT, turns=(turn,))).fit_transform(images)
    assert out.turns == (turn,) and out.turned.shape == (3, 1) + out.tokens.shape[1:]
    # the same image turned before it is given (its size is the input's: the fit changes nothing)
    turned_images = turn_input(torch.as_tensor(images).permute(0, 3, 1, 2), turn).permute(0, 2, 3, 1).numpy()
    direct = ViTPatchTransformer(**TINY_VIT).fit_transform(np.ascontiguousarray(turned_images))
    np.testing.assert_allclose(out.turned[:, 0], direct.tokens, atol=1e-5)
    assert np.abs(out.turned[:, 0] - out.tokens).max() > 1e-2  # a copy is not the image


def test_turn_names_follow_numpy():
    image = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)  # (H, W, C)
    t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    for name, want in [("rot90", np.rot90(image, 1)), ("rot180", np.rot90(image, 2)), ("rot270", np.rot90(image, 3)),
                       ("flip", image[:, ::-1]), ("flip_v", image[::-1])]:
        np.testing.assert_array_equal(turn_input(t, name)[0].numpy().transpose(1, 2, 0), want)


def test_quarter_turns_need_a_square_input():
    with pytest.raises(ValueError, match=r"^turns \['rot90'\] need a square model input to turn, got image_size "
                                         r"28 x 42: use 'rot180', 'flip' or 'flip_v', or a square image_size$"):
        ViTPatchTransformer(**dict(TINY_VIT, image_size=(28, 42), turns=("rot90", "flip"))).fit()
    vit = ViTPatchTransformer(**dict(TINY_VIT, image_size=(28, 42), turns=("rot180", "flip_v"))).fit()
    assert vit.turns_ == ("rot180", "flip_v")


@pytest.mark.parametrize("turns, message", [
    (("rot45",), r"^turns must be None or a turn name or a non-empty sequence of them \('rot90', 'rot180', "
                 r"'rot270', 'flip', 'flip_v'\), got \('rot45',\)$"),
    ((), r"^turns must be None or a turn name"),
    (("flip", "flip"), r"^turns \('flip', 'flip'\) name the same copy twice$"),
])
def test_bad_turns_are_refused_in_one_line(turns, message):
    with pytest.raises(ValueError, match=message):
        ViTPatchTransformer(**dict(TINY_VIT, turns=turns)).fit()


def test_one_name_is_one_copy_and_the_parameter_clones():
    vit = ViTPatchTransformer(**dict(TINY_VIT, turns="flip"))
    assert clone(vit).get_params()["turns"] == "flip"
    assert vit.fit().turns_ == ("flip",)
    assert ViTPatchTransformer(**TINY_VIT).fit().turns_ == ()


# ------------------------------------------------------------------ containers and refusals

def test_take_and_pickle_keep_the_copies_aligned(rng):
    X = random_sets(rng, n=5)
    part = X.take([3, 1])
    np.testing.assert_array_equal(part.turned, X.turned[[3, 1]])
    tokens = PatchTokens(tokens=X.features, turned=X.turned, turns=X.turns)
    np.testing.assert_array_equal(tokens.take([4]).turned, X.turned[[4]])
    feats = LNAMDTransformer(device="cpu", progress=False, r_list=(1, 3)).fit_transform(tokens)
    assert feats.turns == NAMES and not feats.turned.flags.c_contiguous  # set-major, as the images
    back = pickle.loads(pickle.dumps(feats))
    np.testing.assert_array_equal(back.turned, feats.turned)
    assert back.turned.strides == feats.turned.strides and back.features.strides == feats.features.strides


def test_lnamd_aggregates_the_copies_as_images(rng):
    tokens = rng.normal(size=(3, 2, 5, 5, 8)).astype(np.float32)
    turned = rng.normal(size=(3, 2, 2, 5, 5, 8)).astype(np.float32)
    for aggregation in ("similarity", "mean"):
        lnamd = LNAMDTransformer(device="cpu", progress=False, aggregation=aggregation, r_list=(1, 3))
        out = lnamd.fit_transform(PatchTokens(tokens=tokens, turned=turned, turns=NAMES))
        np.testing.assert_array_equal(out.features, lnamd.transform(tokens).features)
        for t in range(2):
            np.testing.assert_array_equal(out.turned[:, t], lnamd.transform(turned[:, t]).features)
    with pytest.raises(ValueError, match=r"^turned tokens must have shape \(n_images, n_turns\)"):
        lnamd.transform(PatchTokens(tokens=tokens, turned=turned[:2], turns=NAMES))


@pytest.mark.parametrize("params, message", [
    (dict(radius=1), r"^radius=1 cannot be combined with the turned copies \('rot90', 'flip'\): a turned part "
                     r"has its patches elsewhere on the grid; use radius=None, or features without turns$"),
    (dict(foreground="always"), r"^foreground='always' cannot be combined with the turned copies"),
])
def test_same_position_matching_and_foreground_refuse_copies(rng, params, message):
    with pytest.raises(ValueError, match=message):
        MutualScoringDetector(device="cpu", progress=False, **params).fit(random_sets(rng))


def test_copies_of_the_wrong_shape_are_refused(rng):
    X = random_sets(rng)
    bad = FeatureSets(features=X.features, set_index=X.set_index, turned=X.turned, turns=("rot90",))
    with pytest.raises(ValueError, match=r"^the turned copies of the batch must have shape \(n_images, n_turns\)"):
        MutualScoringDetector(device="cpu", progress=False).fit(bad)


def test_the_cross_modal_detector_refuses_copies_instead_of_dropping_them(rng):
    from sklearn_musc import CrossModalDetector
    from sklearn_musc._batch import MultimodalFeatures

    rgb = random_sets(rng, n=4, n_sets=1)
    xyz = FeatureSets(features=random_sets(rng, n=4, n_sets=1).features, set_index=((0, 0),))
    with pytest.raises(ValueError, match=r"^CrossModalDetector does not score with turned copies \(\('rot90', "
                                         r"'flip'\)\): make the features without ViTPatchTransformer\(turns=\.\.\.\)$"):
        CrossModalDetector(device="cpu").fit(MultimodalFeatures(rgb=rgb, xyz=xyz))


# ------------------------------------------------------------------ the command line

CLI_RANDOM = ["--pretrained", "none", "--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56",
              "--device", "cpu", "--no-progress"]


@pytest.fixture
def part_dir(tmp_path):
    from sklearn_musc.datasets import save_synthetic_defects

    save_synthetic_defects(tmp_path / "part", n_images=6, n_anomalous=2, image_size=64, kind="object", random_state=0)
    return tmp_path / "part" / "test"


def test_cli_turns_score_a_batch_and_a_model_with_copies(part_dir, tmp_path, capsys):
    import json

    from _helpers import run_cli

    out = tmp_path / "out"
    rc, text, err = run_cli(capsys, "score", part_dir, "--out", out, "--turns", "rot90,flip", *CLI_RANDOM)
    assert rc == 0, err
    assert "with turned copies rot90,flip as extra scorers" in err  # the ViT's stage line
    assert json.loads((out / "summary.json").read_text())["settings"]["turns"] == ["rot90", "flip"]
    model = tmp_path / "model.joblib"
    rc, text, err = run_cli(capsys, "fit", part_dir, "--model", model, "--turns", "rot180", *CLI_RANDOM)
    assert rc == 0, err
    assert "fitted a pool of 6 images with turned copies rot180" in text
    rc, text, err = run_cli(capsys, "score", part_dir, "--model", model, "--out", tmp_path / "new", "--no-progress")
    assert rc == 0, err
    assert "against the pool of 6 images and their turned copies (rot180)" in err


def test_cli_bad_turns_are_one_line_usage_errors(part_dir, tmp_path, capsys):
    from _helpers import run_cli

    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        run_cli(capsys, "score", part_dir, "--out", tmp_path / "out", *CLI_RANDOM, "--turns", "rot45")
    assert exit_.value.code == 2
    assert ("argument --turns: must be comma-separated names among rot90, rot180, rot270, flip, flip_v, got "
            "'rot45'") in capsys.readouterr().err
    rc, _, err = run_cli(capsys, "score", part_dir, "--out", tmp_path / "out", *CLI_RANDOM, "--turns", "rot90",
                         "--image-size", "56x84")
    assert rc == 2 and len(err.strip().splitlines()) == 2, err  # the stage line, then the error
    assert "turns ['rot90'] need a square model input to turn, got image_size 56 x 84" in err.splitlines()[-1]


def test_the_cli_estimate_counts_the_copies():
    from sklearn_musc.cli import estimate

    plain = estimate.estimate(10, 2, 3, depth=2, width=16, grid=(3, 3), prefix=1, rate=1e6)
    turned = estimate.estimate(10, 2, 3, depth=2, width=16, grid=(3, 3), prefix=1, rate=1e6, n_turns=2)
    assert np.isclose(turned[0], 3 * plain[0])  # every image and reference passes the ViT 3 times
    # per set: 45 pairs of the batch, 20 with the references; each copy: 10 x 12 more pairs
    assert np.isclose(turned[1] / plain[1], (45 + 20 + 2 * 10 * 12) / (45 + 20))


def test_names_without_copies_are_refused_and_old_pickles_score_without_copies(rng):
    X = random_sets(rng, n=6)
    with pytest.raises(ValueError, match=r"^the turned copies of the batch must have shape .* got None and "
                                         r"turns=\('rot90', 'flip'\)$"):
        MutualScoringDetector(device="cpu", progress=False).fit(FeatureSets(features=X.features, turns=X.turns))
    plain = FeatureSets(features=X.features, set_index=X.set_index)
    det = MutualScoringDetector(novelty=True, device="cpu", progress=False).fit(plain.take(range(5)))
    want = det.score_samples(plain.take([5]))
    for name in ("_pool_copies", "turns_"):  # a detector saved before turned copies existed
        del det.__dict__[name]
    old = pickle.loads(pickle.dumps(det))
    assert old.turns_ == () and old.pool_.turned is None
    np.testing.assert_array_equal(old.score_samples(plain.take([5])), want)


def test_progress_counts_every_pair_the_copies_add(rng, monkeypatch):
    from sklearn_musc import scoring

    bars = []

    class Bar:
        def __init__(self, total, desc, enabled, unit="it"):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

    monkeypatch.setattr(scoring, "progress_bar", Bar)
    X = random_sets(rng, n=10)
    det = MutualScoringDetector(novelty=True, max_pool_size=20, device="cpu")
    det.fit(X.take(range(5)), references=X.take([5, 6]))
    det.partial_fit(X.take([7, 8]))
    det.score_samples(X.take([9]))
    det.set_params(n_subsets=2, random_state=0).fit(X.take(range(6)))  # subsets: the pool calibrated apart
    det.set_params(novelty=False).fit(X)
    assert {b.desc for b in bars} == {"mutual scoring", "reference scores", "adding to the pool", "novelty scoring",
                                      "pool calibration"}
    assert [(b.desc, b.n) for b in bars] == [(b.desc, b.total) for b in bars]
