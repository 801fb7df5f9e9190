"""make_musc_pipeline: the presets, their overrides, and the pipelines the command lines build with them."""

from pathlib import Path

import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from sklearn_musc import (LNAMDTransformer, MutualScoringDetector, RsCINRescorer, ViTPatchTransformer,
                          available_presets, cli, make_musc_pipeline)
from sklearn_musc.cli import options as cli_options
from sklearn_musc.cli.demo import DEMO_BACKBONE
from sklearn_musc.presets import PRESETS, pretrained_from_options
from _helpers import load_script

STEP_TYPES = [("vit", ViTPatchTransformer), ("lnamd", LNAMDTransformer), ("msm", MutualScoringDetector),
              ("rscin", RsCINRescorer)]

# The paper's setting, written out: what the command line and reproduce.py built by hand before the presets,
# and the settings whose estimator defaults now differ from the paper's (aggregation, interval, filter, embedding).
PAPER = {
    "vit__backbone": "open_clip:ViT-L-14-336", "vit__pretrained": "openai", "vit__image_size": 518,
    "vit__crop_mode": "center", "vit__layers": None, "vit__random_state": 0, "lnamd__r_list": (1, 3, 5),
    "lnamd__aggregation": "mean",
    "msm__topmin_min": 0.0, "msm__topmin_max": 0.3, "msm__repeat_ratio": None, "msm__random_state": 0,
    "rscin__k_list": (1, 2, 3), "rscin__embedding": "image",
}
# The library's defaults after the backbone (benchmarks/RESULTS.md, "Beyond the paper").
DEFAULTS = {"vit__crop_mode": "auto", "lnamd__aggregation": "similarity", "msm__topmin_max": 0.2,
            "rscin__k_list": (1, 7), "rscin__embedding": "auto"}
EXPECTED = {
    "default": {**PAPER, "vit__pretrained": True, **DEFAULTS},
    "paper-mvtec": PAPER,
    "paper-visa": {**PAPER, "rscin__k_list": (1, 8, 9)},
    "paper-btad": PAPER,
}


def params(pipe):
    return {k: v for k, v in pipe.get_params().items() if k.count("__") == 1 and k.split("__")[0] in dict(STEP_TYPES)}


def test_presets_are_listed():
    assert available_presets() == ("default", "paper-mvtec", "paper-visa", "paper-btad")
    assert tuple(PRESETS) == available_presets()
    with pytest.raises(TypeError):
        PRESETS["paper-visa"]["rscin__k_list"] = (1,)  # read-only: a caller cannot change a preset


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_preset_builds_the_four_steps_with_its_values(preset):
    pipe = make_musc_pipeline(preset)
    assert isinstance(pipe, Pipeline)
    assert [(name, type(step)) for name, step in pipe.steps] == STEP_TYPES
    got = params(pipe)
    for key, value in EXPECTED[preset].items():
        assert got[key] == value, key
    # every other parameter keeps its estimator's default
    defaults = params(Pipeline([(name, cls()) for name, cls in STEP_TYPES]))
    assert {k: v for k, v in got.items() if k not in EXPECTED[preset]} == {
        k: v for k, v in defaults.items() if k not in EXPECTED[preset]}


def test_default_preset_is_the_default():
    assert params(make_musc_pipeline()) == params(make_musc_pipeline("default"))


def test_default_preset_keeps_the_estimators_defaults_and_the_paper_presets_pin_the_paper():
    """After the backbone, "default" is what the estimators do unconfigured (seeded); the paper presets are not."""
    bare = params(Pipeline([(name, cls()) for name, cls in STEP_TYPES]))
    default = params(make_musc_pipeline())
    after_backbone = [k for k in bare if not k.startswith("vit__") and k != "msm__random_state"]
    assert {k: default[k] for k in after_backbone} == {k: bare[k] for k in after_backbone}
    paper = params(make_musc_pipeline("paper-mvtec"))
    assert {k for k in DEFAULTS if paper[k] != bare[k]} == set(DEFAULTS)


@pytest.mark.parametrize("preset", ["paper", "", "Paper-MVTec", None, 3])
def test_unknown_preset_is_one_line_listing_the_valid_names(preset):
    with pytest.raises(ValueError, match=r"^unknown preset .*; valid presets: 'default', 'paper-mvtec', "
                                         r"'paper-visa', 'paper-btad'$"):
        make_musc_pipeline(preset)


def test_overrides_win_over_the_preset():
    pipe = make_musc_pipeline("paper-visa", rscin__k_list=(1, 2), vit__device="cpu", msm__max_subset_size=50,
                              lnamd__dtype="float16")
    assert pipe["rscin"].k_list == (1, 2) and pipe["vit"].device == "cpu"
    assert pipe["msm"].max_subset_size == 50 and pipe["lnamd"].dtype == "float16"
    assert pipe["vit"].image_size == 518 and pipe["lnamd"].device == "auto"  # the rest as before
    assert PRESETS["paper-visa"]["rscin__k_list"] == (1, 8, 9)  # the preset itself is unchanged


@pytest.mark.parametrize("key, match", [
    ("device", "must be named step__param"),
    ("detector__device", "must be named step__param"),
    ("msm__no_such_parameter", "no_such_parameter"),
])
def test_bad_overrides(key, match):
    with pytest.raises(ValueError, match=match):
        make_musc_pipeline(**{key: 1})


def test_clone_keeps_the_settings_and_builds_new_steps():
    pipe = make_musc_pipeline("paper-visa", vit__device="cpu")
    copy = clone(pipe)
    assert params(copy) == params(pipe)
    assert all(copy[name] is not pipe[name] for name, _ in STEP_TYPES)
    # two calls do not share estimators either
    assert make_musc_pipeline()["vit"] is not make_musc_pipeline()["vit"]


def test_pretrained_from_options():
    assert pretrained_from_options() is True
    assert pretrained_from_options("openai") == "openai"
    assert pretrained_from_options("NONE") is None
    assert pretrained_from_options("openai", Path("w.safetensors")) == "w.safetensors"


# ----------------------------------------------------------------- the command lines build through it


def test_cli_pipeline_is_the_default_preset_with_its_options():
    """The values the CLI gave each estimator before the presets, written out."""
    args = cli.build_parser().parse_args(["score", "d", "--out", "o", "--device", "cpu", "--batch-size", "4",
                                          "--no-progress"])
    pipe = cli_options.build_pipeline(args, cli_options.pretrained(args), novelty=True)
    expected = {
        "vit": dict(backbone="open_clip:ViT-L-14-336", pretrained=True, image_size=518, layers=None,
                    device="cpu", batch_size=4, progress=False, random_state=0),
        "lnamd": dict(r_list=(1, 3, 5), aggregation="similarity", device="cpu", dtype="float32"),
        "msm": dict(contamination="auto", device="cpu", max_subset_size=None, random_state=0, novelty=True,
                    topmin_max=0.2),
        "rscin": dict(k_list=(1, 7), embedding="auto", contamination="auto", novelty=True),
    }
    for step, values in expected.items():
        assert {k: pipe[step].get_params()[k] for k in values} == values, step
    demo = cli.build_parser().parse_args(["demo"])
    demo_pipe = cli_options.build_pipeline(demo, cli_options.pretrained(demo))
    assert demo_pipe["vit"].get_params()["backbone"] == DEMO_BACKBONE


@pytest.fixture(scope="module")
def reproduce():
    return load_script("reproduction/reproduce.py")


@pytest.mark.parametrize("dataset, k_list", [("mvtec", (1, 2, 3)), ("visa", (1, 8, 9)), ("btad", (1, 2, 3))])
def test_reproduce_pipeline_is_the_paper_preset(reproduce, dataset, k_list):
    """The values reproduce.py gave each estimator before the presets, written out."""
    pipe = reproduce.build_pipeline(reproduce.parse_args(["--dataset", dataset, "--data-root", "x", "--out", "y"]))
    expected = {
        "vit": dict(backbone="open_clip:ViT-L-14-336", pretrained=True, image_size=518, backbone_kwargs=None,
                    device="auto", batch_size=8, progress=True, random_state=0),
        "lnamd": dict(r_list=(1, 3, 5), device="auto"),
        "msm": dict(topmin_max=0.3, n_subsets=1, max_subset_size=None, device="auto", random_state=0),
        "rscin": dict(k_list=k_list),
    }
    for step, values in expected.items():
        assert {k: pipe[step].get_params()[k] for k in values} == values, step
