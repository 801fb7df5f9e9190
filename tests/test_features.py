import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from _helpers import SHARED
from sklearn_musc import LNAMDTransformer, PatchTokens
from sklearn_musc._backbones import resolve_backbone, resolve_pretrained
from sklearn_musc.images import load_image
from sklearn_musc.geometry import maps_to_original, preprocess
from sklearn_musc.features import ViTPatchTransformer, default_layers

TIMM = "timm:vit_small_patch14_dinov2"
TIMM_REG = "timm:vit_small_patch14_reg4_dinov2"
CLIP = "open_clip:ViT-B-16"
TINY = {
    TIMM: dict(depth=4, embed_dim=64, num_heads=2),
    TIMM_REG: dict(depth=4, embed_dim=64, num_heads=2),
    CLIP: dict(width=64, layers=4, head_width=32, embed_dim=32),
}


def tiny(backbone=TIMM, image_size=56, **params):
    params.setdefault("backbone_kwargs", TINY[backbone])
    params.setdefault("pretrained", None)
    params.setdefault("device", "cpu")
    params.setdefault("progress", False)
    params.setdefault("dtype", "float32")
    return ViTPatchTransformer(backbone=backbone, image_size=image_size, **params)


@pytest.fixture
def images(rng):
    return [
        rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(90, 40, 3), dtype=np.uint8),
    ]


def _pixels(vit, images):
    return torch.stack([preprocess(load_image(im, "x")[0], vit.input_size_, vit.mean_, vit.std_)
                        for im in images])


def _library_outputs(vit, x):
    """Tokens (N, L, h, w, C) and unit embeddings from the libraries' own APIs."""
    model = vit.model_
    with torch.no_grad():
        if vit.backbone_.startswith("timm:"):
            inter = model.forward_intermediates(
                x, indices=list(vit.layers_), norm=True, output_fmt="NCHW", intermediates_only=True
            )
            emb = model.forward_head(model.forward_features(x), pre_logits=True)
        else:
            inter = model.forward_intermediates(
                x, indices=list(vit.layers_), output_fmt="NCHW", intermediates_only=True
            )["image_intermediates"]
            emb = model(x)  # what CLIP.encode_image returns
    tokens = torch.stack(inter, dim=1).permute(0, 1, 3, 4, 2).numpy()
    return tokens, F.normalize(emb, dim=-1).numpy()


# ----------------------------------------------------------------- tokens


@pytest.mark.parametrize("backbone", [TIMM, CLIP])
@pytest.mark.parametrize("size", [224, 196, (224, 168)])
def test_tokens_equal_library_intermediates(backbone, size, images):
    vit = tiny(backbone, size).fit()
    out = vit.transform(images)
    patch = vit.patch_size_
    h, w = (size, size) if isinstance(size, int) else size
    assert vit.grid_size_ == (h // patch[0], w // patch[1])
    assert out.tokens.shape == (3, 4, *vit.grid_size_, vit.token_dim_)
    assert out.tokens.dtype == np.float32 and out.embeddings.dtype == np.float32
    assert out.input_size == (h, w) and out.layers == (0, 1, 2, 3)
    tokens, emb = _library_outputs(vit, _pixels(vit, images))
    np.testing.assert_allclose(out.tokens, tokens, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.embeddings, emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-6)


def test_clip_tokens_are_the_raw_residual_stream(images):
    vit = tiny(CLIP, 64, layers=[1]).fit()
    out = vit.transform(images[:1])
    visual, x = vit.model_, _pixels(vit, images[:1])
    with torch.no_grad():
        h = visual._embeds(x)
        for block in visual.transformer.resblocks[:2]:
            h = block(h)
    expected = h[:, 1:].reshape(1, 4, 4, -1).numpy()  # class token dropped, no ln_post
    np.testing.assert_allclose(out.tokens[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_timm_tokens_get_the_final_norm(images):
    vit = tiny(TIMM, 56, layers=[2]).fit()
    out = vit.transform(images[:1])
    model, x = vit.model_, _pixels(vit, images[:1])
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        h = model.norm_pre(h)
        for block in model.blocks[:3]:
            h = block(h)
        expected = model.norm(h)[:, 1:].reshape(1, 4, 4, -1).numpy()
    np.testing.assert_allclose(out.tokens[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_register_tokens_are_all_dropped(images):
    vit = tiny(TIMM_REG, (70, 56)).fit()
    assert vit.n_prefix_tokens_ == 5
    out = vit.transform(images)
    assert out.tokens.shape == (3, 4, 5, 4, 64)
    model, x = vit.model_, _pixels(vit, images)
    with torch.no_grad():
        inter = model.forward_intermediates(x, indices=[0, 1, 2, 3], norm=True, output_fmt="NLC",
                                            intermediates_only=True)
    assert inter[0].shape[1] == 5 * 4
    expected = torch.stack(inter, dim=1).reshape(3, 4, 5, 4, 64).numpy()
    np.testing.assert_allclose(out.tokens, expected, rtol=1e-5, atol=1e-5)


def test_layer_order_and_negative_indices(images):
    vit = tiny(layers=[-1, 1]).fit()
    assert vit.layers_ == (3, 1)
    out = vit.transform(images[:2])
    ref = tiny().fit()
    ref.model_.load_state_dict(vit.model_.state_dict())
    full = ref.transform(images[:2])
    np.testing.assert_array_equal(out.tokens[:, 0], full.tokens[:, 3])
    np.testing.assert_array_equal(out.tokens[:, 1], full.tokens[:, 1])
    assert out.layers == (3, 1)


@pytest.mark.parametrize(
    "layers, match",
    [([4], "out of range"), ([-5], "out of range"), ([3, -1], "same block"), ([], "empty"),
     ([1.5], "ints"), ("ab", "ints")],
)
def test_bad_layers(layers, match):
    with pytest.raises(ValueError, match=match):
        tiny(layers=layers).fit()


def test_default_layers_are_the_stage_ends():
    assert default_layers(24) == (5, 11, 17, 23)
    assert default_layers(12) == (2, 5, 8, 11)
    assert default_layers(4) == (0, 1, 2, 3)
    assert default_layers(2) == (0, 1)
    kwargs = dict(embed_dim=32, num_heads=1)
    for depth, expected in [(12, (2, 5, 8, 11)), (24, (5, 11, 17, 23))]:
        vit = tiny(backbone_kwargs=dict(depth=depth, **kwargs), image_size=28).fit()
        assert vit.layers_ == expected
    clip24 = dict(width=32, layers=24, head_width=32, embed_dim=16)
    assert tiny(CLIP, 32, backbone_kwargs=clip24).fit().layers_ == (5, 11, 17, 23)


def test_inner_layers_are_the_stage_ends_but_the_last(images):
    assert default_layers(12, "inner") == (2, 5, 8)
    assert default_layers(24, "inner") == (5, 11, 17)
    assert default_layers(4, "inner") == (0, 1, 2)
    assert default_layers(1, "inner") == (0,)  # nothing to drop
    vit = tiny(layers="inner").fit()
    assert vit.layers_ == (0, 1, 2) and vit.layers == "inner"
    full = tiny().fit()
    full.model_.load_state_dict(vit.model_.state_dict())
    np.testing.assert_array_equal(vit.transform(images[:2]).tokens, full.transform(images[:2]).tokens[:, :3])
    with pytest.raises(ValueError, match="inner"):
        tiny(layers="outer").fit()


def test_batching_and_dtype(images):
    whole = tiny(batch_size=8).fit()
    state = whole.model_.state_dict()
    one = tiny(batch_size=1, dtype="float16", progress=True).fit()
    one.model_.load_state_dict(state)
    a, b = whole.transform(images), one.transform(images)
    assert b.tokens.dtype == np.float16
    np.testing.assert_allclose(b.tokens.astype(np.float32), a.tokens, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- inputs


def test_every_input_kind(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    gray16 = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(gray16)
    pil = Image.fromarray(rgb)
    X = [
        str(path), path, gray16, pil, pil.convert("L"), pil.convert("P"), pil.convert("RGBA"),
        Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16)),
        rgb, rgb[:, :, 0], np.dstack([rgb, rgb[:, :, :1]]), rgb.astype(np.uint16) * 257,
        rgb / 255.0, (rgb / 255.0).astype(np.float32)[:, :, 0],
    ]
    out = tiny().fit_transform(X)
    assert len(out) == len(X) and np.isfinite(out.tokens).all()
    assert out.sources[:3] == (str(path), str(path), str(gray16))
    assert out.sources[3] == "<PIL 3>" and out.sources[8] == "<array 8>"
    assert out.original_sizes == ((40, 60), (40, 60), (30, 30)) + ((40, 60),) * 4 + ((20, 24),) \
        + ((40, 60),) * 6
    # The same picture gives the same tokens whatever the container.
    same = [0, 1, 3, 8, 10]
    for i in same[1:]:
        np.testing.assert_array_equal(out.tokens[i], out.tokens[0])
    # The 16-bit copy is resized in float, not rounded to 8 bits: nearly the same tokens.
    assert np.abs(out.tokens[11] - out.tokens[0]).max() < 0.1


def test_single_array_batch(images):
    stack = np.stack([images[0], images[0][::-1]])
    out = tiny().fit_transform(stack)
    assert out.sources == ("<array 0>", "<array 1>")
    assert out.original_sizes == ((60, 80), (60, 80))


def test_unreadable_image_in_a_batch_names_it(tmp_path, images):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x00garbage" * 20)
    vit = tiny(batch_size=1).fit()
    with pytest.raises(ValueError, match=r"x\.png"):
        vit.transform([images[0], images[1], str(bad)])
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        vit.transform([tmp_path / "nothere.png"])
    with pytest.raises(ValueError, match="no images"):
        vit.transform([])


# ----------------------------------------------------------------- names and weights


def test_backbone_names():
    assert resolve_backbone("open_clip:ViT-L-14-336") == ("open_clip", "ViT-L-14-336")
    assert resolve_backbone("ViT-L/14") == ("open_clip", "ViT-L-14")
    assert resolve_backbone("ViT-B-16-plus-240") == ("open_clip", "ViT-B-16-plus-240")
    assert resolve_backbone("ViT-L-14-336-quickgelu") == ("open_clip", "ViT-L-14-336-quickgelu")
    name = "vit_small_patch14_dinov2.lvd142m"
    assert resolve_backbone(name) == ("timm", name)
    assert resolve_backbone("timm:vit_base_patch8_224.dino") == ("timm", "vit_base_patch8_224.dino")
    with pytest.raises(ValueError, match="ViT-L-14-336"):
        resolve_backbone("ViT-L-14-366")
    with pytest.raises(ValueError, match="timm:vit_small_patch14_dinov2"):
        resolve_backbone("vit_smal_patch14_dinov2")
    with pytest.raises(ValueError, match="vit_base_patch14_dinov2"):
        resolve_backbone("timm:vit_base_patch14_dinov")
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_backbone("vit_medium_patch16_gap_256")  # open_clip and timm both have it
    with pytest.raises(ValueError, match="unknown prefix"):
        resolve_backbone("torchvision:vit_b_16")
    with pytest.raises(ValueError, match="close matches"):
        ViTPatchTransformer(backbone="ViT-B-61", pretrained=None, device="cpu").fit()


def test_non_vit_backbones_are_refused():
    with pytest.raises(ValueError, match="no plain ViT"):
        ViTPatchTransformer(backbone="open_clip:RN50", pretrained=None, device="cpu").fit()
    with pytest.raises(ValueError, match="VisionTransformer"):
        ViTPatchTransformer(backbone="timm:resnet18", pretrained=None, image_size=32,
                            device="cpu").fit()


def test_pretrained_rules(tmp_path):
    assert resolve_pretrained("timm", "vit_small_patch14_dinov2", None) == ("none", None)
    assert resolve_pretrained("timm", "vit_small_patch14_dinov2", False) == ("none", None)
    assert resolve_pretrained("open_clip", "ViT-B-16", "openai") == ("tag", "openai")
    assert resolve_pretrained("open_clip", "ViT-L-14-336", "default") == ("tag", "openai")
    assert resolve_pretrained("timm", "vit_small_patch14_dinov2", True) == ("tag", True)
    tagged = "vit_small_patch14_dinov2.lvd142m"
    assert resolve_pretrained("timm", tagged, "default") == ("tag", "lvd142m")
    assert resolve_pretrained("timm", "vit_small_patch14_dinov2", "lvd142m") == ("tag", "lvd142m")
    with pytest.raises(ValueError, match="available: lvd142m"):
        resolve_pretrained("timm", "vit_small_patch14_dinov2", "openai")
    with pytest.raises(ValueError, match="already names the tag"):
        resolve_pretrained("timm", "vit_base_patch8_224.dino", "augreg_in21k")
    with pytest.raises(ValueError, match="laion400m_e31"):
        resolve_pretrained("open_clip", "ViT-B-16-plus-240", "openai")
    with pytest.raises(ValueError, match="pretrained must be"):
        resolve_pretrained("timm", "vit_small_patch14_dinov2", 3)
    for missing in (tmp_path / "w.safetensors", str(tmp_path / "w.pt"), "w.pth"):
        with pytest.raises(FileNotFoundError, match=r"w\.(safetensors|pt|pth)"):
            resolve_pretrained("timm", "vit_small_patch14_dinov2", missing)
    path = tmp_path / "w.bin"
    path.write_bytes(b"")
    assert resolve_pretrained("open_clip", "ViT-B-16", str(path)) == ("file", path)


def test_tags_reach_the_libraries(monkeypatch, images):
    """Offline check of the tag plumbing: the libraries get the name, tag and size."""
    import open_clip
    import timm

    calls = []
    real_clip, real_timm = open_clip.create_model, timm.create_model

    def fake_clip(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs["vision_cfg"]["image_size"]))
        model = real_clip(name, pretrained=None, **kwargs)
        model.visual.preprocess_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        return model

    def fake_timm(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs["img_size"]))
        return real_timm(name, pretrained=False, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", fake_clip)
    monkeypatch.setattr(timm, "create_model", fake_timm)
    vit = tiny(CLIP, (64, 48), pretrained="openai").fit()
    assert calls[-1] == ("ViT-B-16", "openai", (64, 48))
    np.testing.assert_allclose(vit.mean_, 0.5)
    np.testing.assert_allclose(vit.std_, 0.25)
    assert vit.transform(images[:1]).tokens.shape == (1, 4, 4, 3, 64)
    tiny(TIMM, 56, pretrained="lvd142m").fit()
    assert calls[-1] == ("vit_small_patch14_dinov2.lvd142m", True, (56, 56))
    tiny(TIMM, 56, pretrained=True).fit()
    assert calls[-1] == ("vit_small_patch14_dinov2", True, (56, 56))
    assert pickle.loads(pickle.dumps(vit)).transform(images[:1]).tokens.shape == (1, 4, 4, 3, 64)


def test_timm_weights_file_roundtrip_and_pos_embed_resampling(tmp_path, images):
    from timm.layers import resample_abs_pos_embed

    source = tiny(TIMM, 98).fit()  # 7 x 7 grid
    state = source.model_.state_dict()
    st_path, pt_path = tmp_path / "w.safetensors", tmp_path / "w.pt"
    save_file({k: v.contiguous() for k, v in state.items()}, st_path)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pt_path)
    for path in (st_path, str(pt_path)):
        again = tiny(TIMM, 98, pretrained=path).fit()
        np.testing.assert_array_equal(again.transform(images).tokens,
                                      source.transform(images).tokens)
    # At another size the position embeddings are resampled from 7 x 7 to 4 x 5.
    other = tiny(TIMM, (56, 70), pretrained=st_path).fit()
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(4, 5), old_size=(7, 7),
                                      num_prefix_tokens=1)
    torch.testing.assert_close(other.model_.pos_embed.data, expected)
    assert other.transform(images).tokens.shape == (3, 4, 4, 5, 64)
    # A half-precision file loads into the float32 model.
    half = tmp_path / "half.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, half)
    loaded = tiny(TIMM, 98, pretrained=half).fit()
    assert loaded.model_.pos_embed.dtype == torch.float32
    torch.testing.assert_close(loaded.model_.pos_embed.data, state["pos_embed"].half().float())


def test_clip_weights_file_with_visual_prefix(tmp_path, images):
    from open_clip.model import resize_pos_embed

    source = tiny(CLIP, 64).fit()  # 4 x 4 grid
    state = {f"visual.{k}": v for k, v in source.model_.state_dict().items()}
    state["logit_scale"] = torch.tensor(1.0)  # a whole-CLIP checkpoint has more than the tower
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    again = tiny(CLIP, 64, pretrained=path).fit()
    np.testing.assert_array_equal(again.transform(images).tokens, source.transform(images).tokens)
    bigger = tiny(CLIP, (96, 80), pretrained=path).fit()  # 6 x 5 grid
    holder = {"visual.positional_embedding": state["visual.positional_embedding"]}
    resize_pos_embed(holder, SimpleNamespace(visual=bigger.model_))
    torch.testing.assert_close(bigger.model_.positional_embedding.data,
                               holder["visual.positional_embedding"])
    assert bigger.transform(images).tokens.shape == (3, 4, 6, 5, 64)


def test_bad_weights_files_are_named(tmp_path):
    wrong = tiny(TIMM, 56, backbone_kwargs=dict(depth=4, embed_dim=32, num_heads=2)).fit()
    path = tmp_path / "wrong_width.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.model_.state_dict().items()}, path)
    with pytest.raises(ValueError, match="wrong_width.safetensors.*does not match"):
        tiny(TIMM, 56, pretrained=path).fit()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"nonsense" * 10)
    with pytest.raises(ValueError, match="garbage.safetensors is neither a safetensors file"):
        tiny(TIMM, 56, pretrained=garbage).fit()
    truncated = tmp_path / "truncated.safetensors"  # the right magic, then cut short
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ValueError, match="cannot read weights file .*truncated.safetensors"):
        tiny(TIMM, 56, pretrained=truncated).fit()
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match=r"list\.pt does not hold a state dict"):
        tiny(TIMM, 56, pretrained=listing).fit()
    with pytest.raises(ValueError, match=r"clip_for_timm.pt"):
        torch.save(tiny(CLIP, 64).fit().model_.state_dict(), tmp_path / "clip_for_timm.pt")
        tiny(TIMM, 56, pretrained=tmp_path / "clip_for_timm.pt").fit()
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        tiny(TIMM, 56, pretrained=tmp_path / "absent.pt").fit()


# ----------------------------------------------------------------- estimator contract


def test_sklearn_contract(images):
    vit = tiny(layers=[0, 2])
    params = vit.get_params()
    assert params["backbone"] == TIMM and params["layers"] == [0, 2]
    assert params["pretrained"] is None
    with pytest.raises(NotFittedError):
        check_is_fitted(vit)
    with pytest.raises(NotFittedError):
        vit.transform(images)
    assert not hasattr(vit, "model_")
    vit.fit(images)
    check_is_fitted(vit)
    assert isinstance(vit.model_, torch.nn.Module) and not vit.model_.training
    assert vit.backbone_ == TIMM and vit.n_blocks_ == 4 and vit.patch_size_ == (14, 14)
    assert vit.grid_size_ == (4, 4) and vit.n_prefix_tokens_ == 1 and vit.embed_dim_ == 64
    np.testing.assert_allclose(vit.mean_, (0.485, 0.456, 0.406))
    clip_vit = tiny(CLIP, 64).fit()
    np.testing.assert_allclose(clip_vit.std_, (0.26862954, 0.26130258, 0.27577711))
    cloned = clone(vit)
    assert cloned.get_params() == params and not hasattr(cloned, "layers_")
    assert "layers=[0, 2]" in repr(vit)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=(56, 56, 3)), "image_size"),
        (dict(precision="float64"), "precision"),
        (dict(precision="float16"), "CUDA"),
        (dict(dtype="int8"), "dtype"),
        (dict(batch_size=0), "batch_size"),
        (dict(backbone_kwargs=[1]), "backbone_kwargs"),
        (dict(backbone_kwargs=dict(no_such_option=1)), "backbone_kwargs"),
        (dict(device="gpu"), "device"),
        (dict(image_size=8), "smaller than the patch"),
    ],
)
def test_parameter_validation(params, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit()


def test_pickle_keeps_random_weights(images):
    vit = tiny().fit()
    expected = vit.transform(images).tokens
    restored = pickle.loads(pickle.dumps(vit))
    assert "_backbone" not in restored.__dict__  # rebuilt lazily
    np.testing.assert_array_equal(restored.transform(images).tokens, expected)
    twice = pickle.loads(pickle.dumps(restored))
    np.testing.assert_array_equal(twice.transform(images).tokens, expected)
    pickle.loads(pickle.dumps(tiny()))  # unfitted


def test_pickle_of_file_weights_reloads_the_file(tmp_path, images):
    source = tiny(CLIP, 64).fit()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model_.state_dict().items()}, path)
    vit = tiny(CLIP, 64, pretrained=path).fit()
    blob = pickle.dumps(vit)
    assert len(blob) < 20_000  # no weights inside
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.transform(images).tokens, vit.transform(images).tokens)


def test_cached_pipeline(tmp_path, images):
    pipe = Pipeline([("vit", tiny()), ("lnamd", LNAMDTransformer(r_list=(1, 3), device="cpu"))],
                    memory=str(tmp_path))
    first = pipe.fit_transform(images)
    second = pipe.fit_transform(images)  # the ViT step comes from the cache
    assert first.features.shape == (3, 4, 4, 4, 64)  # one SNAMD set per layer
    np.testing.assert_array_equal(first.features, second.features)


# ----------------------------------------------------------------- maps back on the images


def test_transform_records_sizes_for_maps(images):
    out = tiny().fit_transform(images)
    assert isinstance(out, PatchTokens) and out.original_sizes == ((60, 80), (50, 50), (90, 40))
    maps = np.zeros((3, *out.input_size), np.float32)
    back = maps_to_original(maps, out.original_sizes, out.input_size)
    assert [b.shape for b in back] == [(60, 80), (50, 50), (90, 40)]


# ----------------------------------------------------------------- real weights


@pytest.mark.shared_data
def test_real_dinov2_weights_on_mvtec_bottles(rng):
    weights = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
    good = SHARED / "data" / "mvtec_ad_lowres" / "bottle" / "test" / "good"
    vit = ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=weights,
                              image_size=224, device="cpu", progress=False)
    noise = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    out = vit.fit_transform([good / "000.png", str(good / "001.png"), noise])
    assert vit.layers_ == (2, 5, 8, 11)
    assert out.tokens.shape == (3, 4, 16, 16, 384) and out.tokens.dtype == np.float16
    assert np.isfinite(out.tokens).all()
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    sim = out.embeddings @ out.embeddings.T
    assert sim[0, 1] > 0.9 and sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[1, 2] + 0.1
    assert out.original_sizes[0] == Image.open(good / "000.png").size[::-1]
    assert Path(out.sources[0]).name == "000.png"
