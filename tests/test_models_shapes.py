"""Input sizes: valid grids run, ragged grids are refused with the nearest valid
size, PVT pads for dense prediction and crops the padding off its features."""
import pytest
import timm
import torch

from dge_explain.models import force_gates, from_dense, random_fraction

from helpers import small_dpvt, small_pvt, small_vit


def test_every_registered_name_builds():
    for name in ["deit_dge_s12_tiny_patch16_224", "deit_dge_s12_small_patch16_256",
                 "deit_dge_s124_base_patch16_256", "pvt_dge_s12_tiny_256", "pvt_large_256", "dpvt_small_256",
                 "dpvt_dge_s12_medium_256", "dpvt_dge_s124_large_256"]:
        assert name in timm.list_models("*dge*") + timm.list_models("*pvt_*")
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 7)
    with pytest.raises(ValueError, match="no pretrained DGE weights"):
        timm.create_model("deit_dge_s12_tiny_patch16_224", pretrained=True)


def test_deit_refuses_a_grid_that_is_not_a_multiple_of_the_region_size():
    model = timm.create_model("deit_dge_s124_tiny_patch16_256", depth=1).eval()
    with pytest.raises(ValueError, match=r"token grid 14x14 is not divisible by region size 4.*16x16"):
        model(torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("size", [224, 320, 448])
def test_deit_runs_at_other_sizes(size):
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=2).eval()
    with torch.no_grad(), force_gates(model, random_fraction(0.5)):
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert model.blocks[0].dge.routing.grid == (size // 16, size // 16)


def test_pvt_refuses_unpadded_ragged_inputs():
    model = small_pvt(phi=(1, 2, 4)).eval()
    with pytest.raises(ValueError, match=r"multiples of 128 \(e.g. 256x128\)"):
        model(torch.zeros(1, 3, 200, 100, dtype=torch.float64))


@pytest.mark.parametrize("build", [small_pvt, small_dpvt])
def test_pvt_pyramid_pads_and_crops(build, generator):
    model = build(phi=(1, 2), num_classes=0).eval()
    images = torch.randn(2, 3, 100, 140, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_pyramid(images)
        # S = 2: stage grids must be multiples of 2, inputs multiples of 64
        padded = torch.nn.functional.pad(images, (0, 192 - 140, 0, 128 - 100))
        full = model.forward_pyramid(padded, pad=False)
    expected = {"res2": (25, 35), "res3": (13, 18), "res4": (7, 9), "res5": (4, 5)}
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == expected
    assert [v.shape[1] for v in features.values()] == [16, 32, 40, 48]
    for key, value in features.items():
        h, w = expected[key]
        torch.testing.assert_close(value, full[key][..., :h, :w])
    assert set(model(padded)) == {"res2", "res3", "res4", "res5"}


def test_from_dense_refuses_other_architectures():
    with pytest.raises(ValueError, match="ResNet is not a timm VisionTransformer"):
        from_dense("resnet18")
    dense = timm.create_model("vit_tiny_patch16_224", depth=1, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="create_kwargs"):
        from_dense(dense, depth=2)
    dense.blocks[0] = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"blocks.0 is a Identity; only timm's pre-norm Block"):
        from_dense(dense)


def test_options_of_timm_vits_are_kept(generator):
    """Register tokens, no cls token with average pooling, LayerScale, qk-norm."""
    dense = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, reg_tokens=2,
                              class_token=False, global_pool="avg", init_values=0.1,
                              qk_norm=True).double().eval()
    dge = from_dense(dense, phi=(1, 2)).eval()
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with torch.no_grad(), force_gates(dge, "finest"):
        torch.testing.assert_close(dge(images), dense(images), rtol=1e-10, atol=1e-10)
    assert dge.blocks[0].dge.routing.num_extra == 2


def test_small_builders_round_trip(generator):
    model = small_vit(phi=(1, 2, 4)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, generator=generator, dtype=torch.float64)).shape == (1, 10)


def test_token_map_is_the_nchw_map_and_a_view_of_contiguous_tokens(generator):
    from dge_explain.models.attention import token_map

    tokens = torch.randn(2, 6 * 4, 5, generator=generator, dtype=torch.float64)
    nchw = tokens.transpose(1, 2).reshape(2, 5, 6, 4)
    mapped = token_map(tokens, (6, 4))
    assert torch.equal(mapped, nchw) and mapped.data_ptr() == tokens.data_ptr()
    assert mapped.is_contiguous(memory_format=torch.channels_last)
    # strided tokens (every other channel) still map correctly, through a copy
    wide = torch.randn(2, 6 * 4, 10, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(token_map(wide[..., ::2], (6, 4)), wide[..., ::2].transpose(1, 2).reshape(2, 5, 6, 4),
                               rtol=0, atol=0)
