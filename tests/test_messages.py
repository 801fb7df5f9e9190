"""Error messages that name the real problem (issue #12, item 9)."""

import numpy as np
import pytest

from _helpers import SHARED
from sklearn_musc import LNAMDTransformer, ViTPatchTransformer

WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
TIMM = dict(backbone="timm:vit_small_patch14_dinov2", device="cpu", progress=False)


@pytest.mark.shared_data
def test_an_image_size_below_the_patch_size_does_not_blame_the_weights_file():
    with pytest.raises(ValueError, match=r"image_size \(13, 13\) is smaller than the patch size") as exc:
        ViTPatchTransformer(pretrained=str(WEIGHTS), image_size=13, **TIMM).fit()
    assert "weights file" not in str(exc.value)


def test_a_float_image_size_is_shown_as_given():
    with pytest.raises(ValueError, match=r"got 56\.0"):
        ViTPatchTransformer(pretrained=None, image_size=56.0, **TIMM).fit()


def test_a_folder_given_as_weights_is_called_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ViTPatchTransformer(pretrained=str(tmp_path) + "/", image_size=56, **TIMM).fit()


def test_a_text_file_given_as_weights_says_what_it_is_not(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="neither a safetensors file nor a PyTorch checkpoint"):
        ViTPatchTransformer(pretrained=str(path), image_size=56, **TIMM).fit()


def test_lnamd_takes_a_numpy_int_batch_size():
    tokens = np.random.default_rng(0).normal(size=(3, 1, 5, 5, 8)).astype(np.float32)
    out = LNAMDTransformer(batch_size=np.int64(2), device="cpu").fit_transform(tokens)
    expected = LNAMDTransformer(batch_size=3, device="cpu").fit_transform(tokens)
    np.testing.assert_allclose(out.features, expected.features)
