"""Study for issue #24: RsCIN behind other scorers (anomalib's PatchCore, PyOD) on the shared MVTec AD.

DINOv2 ViT-S/14 at 224 px, the cached tokens of ``_cache.py`` (blocks 2, 5, 8,
11). For every category, the image scores of each scorer and the embedding
RsCIN uses behind it are kept in ``$MUSC_SCORERS`` (default
``/tmp/musc-scorers``); the tables re-score them with RsCIN (cheap)::

    python studies/scorers.py compute [category ...]   # scores of every scorer (cached)
    python studies/scorers.py table                    # before / after RsCIN, TUNE / confirm / all
    python studies/scorers.py check bottle             # PatchCore with anomalib's own extractor on the images
    python studies/scorers.py cost                     # seconds of each scorer and of RsCIN behind it

Scorers:

- anomalib's PatchCore (``PatchcoreModel``, its own forward: feature pooling,
  embedding, nearest-neighbour search, re-weighted image score) in the
  few-shot setting: a memory bank of the k = 1, 2, 4, 8 good images that
  ``fewshot.py`` draws (seed 0, the same references, so the same scored batch
  B_k), all their patches (no coreset subsampling: at most 8 x 256 patches).
  Its feature extractor is a module that hands the cached ViT tokens to
  anomalib's forward (``Tokens``); ``check`` compares it with anomalib's own
  ``TimmFeatureExtractor`` loaded with the shared weights on the images. The
  ViT blocks are chosen on the 8 TUNE categories at k = 4. RsCIN behind it
  uses PatchCore's embedding of each image's top patch
  (``sklearn_musc.interop.PatchCoreCapture``).
- PyOD's KNN, LOF, IForest and ECOD, fitted on the image embeddings (unit
  class tokens) of the whole test folder, unsupervised (``decision_scores_``);
  RsCIN behind them uses the same embeddings.
- MuSc with the library's defaults (SNAMD, topmin_max 0.2): zero-shot on the
  whole folder and on B_k, and few-shot with the k references (paper A.6);
  RsCIN behind it on MuSc-V2's salient feature. The scores are derived from
  ``fewshot.py``'s table of best matches (``fewshot.py --check`` verifies
  that derivation against the estimators).

RsCIN windows: the defaults (1, 7), and the windows chosen for each scorer on
the mean image AUROC of the 8 TUNE categories among ``WINDOWS`` ((1,) is RsCIN
off), reported on the other 7 too.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fewshot  # noqa: E402
from _cache import TUNE, WEIGHTS, categories, load  # noqa: E402

from sklearn_musc import LNAMDTransformer, RsCINRescorer  # noqa: E402
from sklearn_musc.interop import PatchCoreCapture, salient_features  # noqa: E402
from sklearn_musc.metrics import image_ap, image_auroc  # noqa: E402

OUT = Path(os.environ.get("MUSC_SCORERS", "/tmp/musc-scorers"))
SHOTS = fewshot.SHOTS
BLOCKS = (2, 5, 8, 11)  # the cached layers
SELECT_K = 4  # PatchCore's blocks are chosen at this k
PATCHCORE_LAYERS = {"8": (8,), "11": (11,), "5+8": (5, 8), "8+11": (8, 11), "2+5+8+11": (2, 5, 8, 11)}
PYOD = ("KNN", "LOF", "IForest", "ECOD")
WINDOWS = ((1,), (1, 2, 3), (1, 3), (1, 5), (1, 7), (1, 8, 9), (1, 11), (1, 15))
TOPMIN_MAX = 0.2  # the detector's default


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------- PatchCore

class Tokens(torch.nn.Module):
    """A feature extractor for anomalib's PatchCore that hands it cached ViT tokens.

    anomalib's forward sizes the anomaly map (a Gaussian blur of 33 pixels)
    after its input, so the input is an image-sized tensor ``(B, 1, 224,
    224)`` that carries each image's index in its first pixel; the output is
    what anomalib's ``TimmFeatureExtractor`` returns for a ViT:
    ``{"blocks.i": (B, C, h, w)}`` of that image's cached tokens.
    """

    def __init__(self, tokens, blocks):
        super().__init__()
        keep = [BLOCKS.index(b) for b in blocks]
        t = torch.as_tensor(np.ascontiguousarray(tokens.tokens[:, keep]), dtype=torch.float32)  # (N, nb, h, w, C)
        self.maps = t.permute(0, 1, 4, 2, 3)  # (N, nb, C, h, w)
        self.blocks = list(blocks)

    def forward(self, x):
        maps = self.maps[x[:, 0, 0, 0].long()]
        return {f"blocks.{b}": maps[:, i] for i, b in enumerate(self.blocks)}


def indices(idx, size=224):
    x = torch.zeros(len(idx), 1, size, size)
    x[:, 0, 0, 0] = torch.as_tensor(np.asarray(idx), dtype=torch.float32)
    return x


def patchcore_model(tokens, blocks):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    # a randomly initialised ViT-S (no download); its extractor is replaced by the cached tokens
    model = PatchcoreModel(layers=[f"blocks.{b}" for b in blocks], backbone="vit_small_patch14_dinov2",
                           pre_trained=False)
    model.feature_extractor = Tokens(tokens, blocks)
    return model


def run_patchcore(model, refs, batch, batch_size=32):
    """Fill the memory bank with ``refs`` (anomalib's training forward), score ``batch``; (scores, salient)."""
    model.train()
    with torch.no_grad():
        model(refs)
    model.memory_bank = torch.vstack(model.embedding_store)  # all patches (few-shot: no coreset)
    model.embedding_store.clear()
    model.eval()
    with PatchCoreCapture(model) as capture, torch.no_grad():
        for start in range(0, len(batch), batch_size):
            model(batch[start:start + batch_size])
    return capture.scores, capture.salient_features


# ----------------------------------------------------------------- compute

def musc_scores(T, feats, rows, cols, n_batch):
    """Image scores and salient features of MuSc's defaults, from fewshot's table."""
    ps = fewshot.patch_scores(T, rows, cols, fewshot.bounds(n_batch, (0.0, TOPMIN_MAX)))
    scores = fewshot.upsample(ps).reshape(len(rows), -1).max(axis=1)
    # the detector's salient feature: its second-to-last block's set (block 8, set 0 of blocks 8 and 11)
    assert feats.set_index[0] == (8, 0)
    return scores, salient_features(feats.features[np.asarray(rows), 0], ps)


def compute(category):
    path = OUT / f"{category}.joblib"
    if path.exists():
        return joblib.load(path)
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF

    e = load(category)
    labels = np.asarray(e["labels"])
    n = len(labels)
    allidx = np.arange(n)
    perm = fewshot.draw_refs(labels, 0)
    rows, seconds = {}, {}

    def add(name, idx, scores, emb, t):
        rows[name] = dict(idx=np.asarray(idx), scores=np.asarray(scores, dtype=np.float64),
                          emb=np.asarray(emb, dtype=np.float32))
        seconds[name] = t

    # PyOD on the image embeddings of the whole folder
    X = np.asarray(e["tokens"].embeddings, dtype=np.float64)
    for name, make in (("KNN", KNN), ("LOF", LOF), ("IForest", lambda: IForest(random_state=0)), ("ECOD", ECOD)):
        t0 = time.perf_counter()
        clf = make().fit(X)
        add(f"PyOD {name}", allidx, clf.decision_scores_, X, time.perf_counter() - t0)
    # anomalib's PatchCore, k good references, with the blocks chosen on TUNE
    key = patchcore_layers()[0]
    model = patchcore_model(e["tokens"], PATCHCORE_LAYERS[key])
    for k in SHOTS:
        R = np.sort(perm[:k])
        B = np.setdiff1d(allidx, R)
        t0 = time.perf_counter()
        scores, salient = run_patchcore(model, indices(R), indices(B))
        add(f"PatchCore {key} k{k}", B, scores, salient, time.perf_counter() - t0)
    # MuSc's defaults, from fewshot's table (its features are LNAMDTransformer's defaults)
    T, _ = fewshot.table(category)
    # the salient feature is read from the second-to-last block (8) of the SNAMD sets, each made from
    # its own block: aggregating blocks 8 and 11 only gives the same set, at half the cost
    tokens = e["tokens"]
    tokens = dataclasses.replace(tokens, tokens=tokens.tokens[:, [BLOCKS.index(8), BLOCKS.index(11)]],
                                 layers=(8, 11))
    feats = LNAMDTransformer(device="cpu", progress=False).fit_transform(tokens)
    t0 = time.perf_counter()
    s, sal = musc_scores(T, feats, allidx, allidx, n)
    add("MuSc zero-shot", allidx, s, sal, time.perf_counter() - t0)
    for k in SHOTS:
        R = np.sort(perm[:k])
        B = np.setdiff1d(allidx, R)
        add(f"MuSc zero-shot B{k}", B, *musc_scores(T, feats, B, B, len(B)), 0.0)
        add(f"MuSc few-shot k{k}", B, *musc_scores(T, feats, B, allidx, n), 0.0)
    entry = dict(labels=labels, rows=rows, seconds=seconds)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(entry, tmp)
    tmp.replace(path)
    log(f"{category}: {len(rows)} scorers")
    return entry


# ----------------------------------------------------------------- tables

def rescored(row, k_list):
    if k_list == (1,):
        return row["scores"]
    # a threshold given: the scores only, without the label rule (which does not change them)
    return RsCINRescorer(k_list=k_list, threshold=0.0).fit(row["emb"], scores=row["scores"]).anomaly_scores_


_METRICS = {}


def metrics_of(cats, name, k_list):
    """{category: (AUROC, AP)} of scorer ``name`` after RsCIN with ``k_list`` ((1,): before)."""
    out = {}
    for c in cats:
        if (c, name, k_list) not in _METRICS:
            e = compute(c)
            row = e["rows"][name]
            y = e["labels"][row["idx"]]
            s = rescored(row, k_list)
            _METRICS[c, name, k_list] = (100 * image_auroc(y, s), 100 * image_ap(y, s))
        out[c] = _METRICS[c, name, k_list]
    return out


def choose(cats, name):
    """The windows with the best mean image AUROC on the TUNE categories."""
    tune = [c for c in cats if c in TUNE]
    return max(WINDOWS, key=lambda w: np.mean([v[0] for v in metrics_of(tune, name, w).values()]))


def select_blocks(category):
    """Image AUROC of PatchCore with each choice of blocks at k = SELECT_K (cached)."""
    path = OUT / f"{category}.blocks.json"
    if path.exists():
        return json.loads(path.read_text())
    e = load(category)
    labels = np.asarray(e["labels"])
    R = np.sort(fewshot.draw_refs(labels, 0)[:SELECT_K])
    B = np.setdiff1d(np.arange(len(labels)), R)
    got = {}
    for key, blocks in PATCHCORE_LAYERS.items():
        scores, _ = run_patchcore(patchcore_model(e["tokens"], blocks), indices(R), indices(B))
        got[key] = 100 * image_auroc(labels[B], scores)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got))
    log(f"{category} blocks: {got}")
    return got


def patchcore_layers():
    """PatchCore's blocks with the best mean image AUROC at k = SELECT_K on TUNE (before RsCIN); the means."""
    means = {key: float(np.mean([select_blocks(c)[key] for c in TUNE])) for key in PATCHCORE_LAYERS}
    return max(means, key=means.get), means


def scorer_names(layers):
    names = ["MuSc zero-shot"] + [f"PyOD {p}" for p in PYOD]
    for k in SHOTS:
        names += [f"PatchCore {layers} k{k}", f"MuSc few-shot k{k}", f"MuSc zero-shot B{k}"]
    return names


def mean(d, cs, i):
    return np.mean([d[c][i] for c in cs])


def table(cats):
    tune = [c for c in cats if c in TUNE]
    confirm = [c for c in cats if c not in TUNE]
    layers, layer_means = patchcore_layers()
    lines = [f"PatchCore blocks, mean image AUROC at k = {SELECT_K} on TUNE (before RsCIN): "
             + ", ".join(f"{k} {v:.1f}" for k, v in layer_means.items()) + f" -> {layers}", ""]
    lines += ["| scorer | before: AUROC / AP (all) | RsCIN (1, 7): AUROC / AP (all) "
              "| (1, 7) AUROC TUNE / confirm | chosen windows | chosen: AUROC TUNE / confirm / all "
              "| chosen: AP all |", "|---" * 7 + "|"]
    per_cat = {}
    for name in scorer_names(layers):
        before = metrics_of(cats, name, (1,))
        default = metrics_of(cats, name, (1, 7))
        w = choose(cats, name)
        chosen = metrics_of(cats, name, w)
        per_cat[name] = (before, default, chosen, w)
        lines.append(
            f"| {name} | {mean(before, cats, 0):.1f} / {mean(before, cats, 1):.1f} "
            f"| {mean(default, cats, 0):.1f} / {mean(default, cats, 1):.1f} "
            f"| {mean(default, tune, 0):.1f} / {mean(default, confirm, 0):.1f} (before {mean(before, tune, 0):.1f} / "
            f"{mean(before, confirm, 0):.1f}) "
            f"| {' '.join(map(str, w))} | {mean(chosen, tune, 0):.1f} / {mean(chosen, confirm, 0):.1f} / "
            f"{mean(chosen, cats, 0):.1f} | {mean(chosen, cats, 1):.1f} |")
    # per category: image AUROC before -> after RsCIN (1, 7)
    show = ["MuSc zero-shot"] + [f"PyOD {p}" for p in PYOD] + [f"PatchCore {layers} k{k}" for k in SHOTS] \
        + [f"MuSc few-shot k{k}" for k in SHOTS]
    lines += ["", "Per category, image AUROC before -> after RsCIN (1, 7) [AP before -> after]", "",
              "| category | " + " | ".join(show) + " |", "|---" * (1 + len(show)) + "|"]
    for c in cats:
        cells = []
        for name in show:
            b, d = per_cat[name][0][c], per_cat[name][1][c]
            cells.append(f"{b[0]:.1f} -> {d[0]:.1f} [{b[1]:.1f} -> {d[1]:.1f}]")
        lines.append(f"| {c}{' (T)' if c in TUNE else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------- check and cost

def check(category, blocks=(8, 11)):
    """PatchCore fed by anomalib's own TimmFeatureExtractor (shared weights) on the images vs cached tokens."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from safetensors.torch import load_file

    from sklearn_musc.geometry import preprocess
    from sklearn_musc.images import load_image

    e = load(category)
    labels = np.asarray(e["labels"])
    allidx = np.arange(len(labels))
    model = PatchcoreModel(layers=[f"blocks.{b}" for b in blocks], backbone="vit_small_patch14_dinov2",
                           pre_trained=False)
    model.feature_extractor.feature_extractor.load_state_dict(
        {k: v.float() for k, v in load_file(WEIGHTS).items()})
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's DINOv2 config, as ViTPatchTransformer
    images = torch.stack([preprocess(load_image(p)[0], (224, 224), mean, std) for p in e["paths"]])
    perm = fewshot.draw_refs(labels, 0)
    cached = patchcore_model(e["tokens"], blocks)
    for k in SHOTS:
        R = np.sort(perm[:k])
        B = np.setdiff1d(allidx, R)
        own, _ = run_patchcore(model, images[R], images[B])
        via, _ = run_patchcore(cached, indices(R), indices(B))
        log(f"{category} k={k}: image AUROC with anomalib's extractor {100 * image_auroc(labels[B], own):.1f}, "
            f"with the cached tokens {100 * image_auroc(labels[B], via):.1f}; "
            f"max |score diff| / max score {np.abs(own - via).max() / np.abs(via).max():.3f}")


def _rscin_seconds(row, repeats, labels=True):
    """Median seconds of RsCIN (1, 7); without ``labels``, a threshold is given: the re-scoring alone."""
    params = {} if labels else dict(threshold=0.0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        RsCINRescorer(**params).fit(row["emb"], scores=row["scores"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cost(cats, repeats=5):
    """Seconds of each scorer (from the features) and of RsCIN (1, 7) behind it, per category, means.

    PyOD and PatchCore: as recorded by ``compute``. MuSc: its scores here are
    derived from a table, so ``MutualScoringDetector().fit`` is timed on the
    first category given.
    """
    from sklearn_musc import MutualScoringDetector

    lines = ["| scorer | scorer s | RsCIN s, scores only | RsCIN s, with labels (auto) | ratios to the scorer |",
             "|---|---|---|---|---|"]

    def line(name, own, rows):
        bare = np.mean([_rscin_seconds(r, repeats, labels=False) for r in rows])
        full = np.mean([_rscin_seconds(r, repeats) for r in rows])
        lines.append(f"| {name} | {own:.3f} | {bare:.4f} | {full:.4f} | {bare / own:.4f} / {full / own:.4f} |")

    layers, _ = patchcore_layers()
    for name in [f"PyOD {p}" for p in PYOD] + [f"PatchCore {layers} k{k}" for k in SHOTS]:
        line(name, np.mean([compute(c)["seconds"][name] for c in cats]), [compute(c)["rows"][name] for c in cats])
    c = cats[0]
    feats = LNAMDTransformer(device="cpu", progress=False).fit_transform(load(c)["tokens"])
    t0 = time.perf_counter()
    MutualScoringDetector(device="cpu").fit(feats)
    line(f"MuSc zero-shot, MSM only ({c})", time.perf_counter() - t0, [compute(c)["rows"]["MuSc zero-shot"]])
    return "\n".join(lines)


def main(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    what = argv[0] if argv else "compute"
    cats = argv[1:] or categories()
    torch.set_num_threads(2)
    if what == "compute":
        for c in TUNE:  # first, PatchCore's blocks
            select_blocks(c)
        for c in cats:
            compute(c)
    elif what == "table":
        print(table(cats))
    elif what == "check":
        check(cats[0])
    elif what == "cost":
        print(cost(cats))
    else:
        raise SystemExit(f"unknown command {what!r}")
    print(json.dumps({"done": what}))


if __name__ == "__main__":
    main(sys.argv[1:])
