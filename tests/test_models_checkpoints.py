"""Parameter names and shapes follow the original implementation exactly
(method notes §3.2); checkpoints load safely and strictly."""
import argparse
import collections
import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from dge_explain.models import CheckpointError, load_checkpoint, read_state_dict

from helpers import small_vit


def _block_keys(b: str, c: int, hidden: int) -> dict[str, tuple]:
    """A pre-norm transformer block with separate q and kv projections."""
    return {f"{b}.norm1.weight": (c,), f"{b}.norm1.bias": (c,),
            f"{b}.attn.q.weight": (c, c), f"{b}.attn.q.bias": (c,),
            f"{b}.attn.kv.weight": (2 * c, c), f"{b}.attn.kv.bias": (2 * c,),
            f"{b}.attn.proj.weight": (c, c), f"{b}.attn.proj.bias": (c,),
            f"{b}.norm2.weight": (c,), f"{b}.norm2.bias": (c,),
            f"{b}.mlp.fc1.weight": (hidden, c), f"{b}.mlp.fc1.bias": (hidden,),
            f"{b}.mlp.fc2.weight": (c, hidden), f"{b}.mlp.fc2.bias": (c,)}


def _router_keys(b: str, c: int) -> dict[str, tuple]:
    """Φ = {1, 2, 4}: three options."""
    return {f"{b}.dge.splits": (3,), f"{b}.dge.router.gate.weight": (3, c), f"{b}.dge.router.gate.bias": (3,)}


def deit_dge_keys(dim: int, depth: int = 12, classes: int = 1000) -> dict[str, tuple]:
    """deit_dge_s124_*_patch16_256, written from §3.2."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 257, dim),
            "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        keys.update(_block_keys(f"blocks.{i}", dim, 4 * dim))
        keys.update(_router_keys(f"blocks.{i}", dim))
    keys.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim),
                 "head.bias": (classes,)})
    return keys


def pvt_keys(depths, dge: bool = True) -> dict[str, tuple]:
    """pvt(_dge_s124)_*_256, written from §3.1/§3.2."""
    dims, ratios, srs, grids = (64, 128, 320, 512), (8, 8, 4, 4), (8, 4, 2, 1), (64, 32, 16, 8)
    keys = {f"pos_embed{s + 1}": (1, grids[s] ** 2 + (1 if s == 3 else 0), dims[s]) for s in range(4)}
    keys["cls_token"] = (1, 1, 512)
    for s in range(4):
        c, prev, p = dims[s], 3 if s == 0 else dims[s - 1], 4 if s == 0 else 2
        e = f"patch_embed{s + 1}"
        keys.update({f"{e}.proj.weight": (c, prev, p, p), f"{e}.proj.bias": (c,),
                     f"{e}.norm.weight": (c,), f"{e}.norm.bias": (c,)})
        for j in range(depths[s]):
            b = f"block{s + 1}.{j}"
            keys.update(_block_keys(b, c, ratios[s] * c))
            if srs[s] > 1:
                keys.update({f"{b}.attn.sr.weight": (c, c, srs[s], srs[s]), f"{b}.attn.sr.bias": (c,),
                             f"{b}.attn.norm.weight": (c,), f"{b}.attn.norm.bias": (c,)})
            if dge:
                keys.update(_router_keys(b, c))
    keys.update({"norm.weight": (512,), "norm.bias": (512,), "head.weight": (1000, 512),
                 "head.bias": (1000,)})
    return keys


def dpvt_keys(depths, dge: bool = True) -> dict[str, tuple]:
    """dpvt(_dge_s124)_*_256: PVT's layout without cls token, spatial reduction and
    q/kv; the deformable attention's v, offsets (heads * P * 2), attn_weight
    (heads * P) and proj, P = 4 (§2.7)."""
    keys = pvt_keys(depths, dge)
    del keys["cls_token"]
    keys["pos_embed4"] = (1, 64, 512)
    heads = (1, 2, 5, 8)
    for key in [k for k in keys if ".attn." in k]:
        del keys[key]
    for s in range(4):
        c = (64, 128, 320, 512)[s]
        for j in range(depths[s]):
            b = f"block{s + 1}.{j}.attn"
            keys.update({f"{b}.v.weight": (c, c), f"{b}.v.bias": (c,),
                         f"{b}.offsets.weight": (heads[s] * 8, c), f"{b}.offsets.bias": (heads[s] * 8,),
                         f"{b}.attn_weight.weight": (heads[s] * 4, c), f"{b}.attn_weight.bias": (heads[s] * 4,),
                         f"{b}.proj.weight": (c, c), f"{b}.proj.bias": (c,)})
    return keys


@pytest.mark.parametrize("name,dge", [("dpvt_small_256", False), ("dpvt_dge_s124_small_256", True)])
def test_dpvt_keys_and_shapes(name, dge):
    assert _shapes(timm.create_model(name)) == dpvt_keys((3, 4, 6, 3), dge)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _random_state(keys, generator):
    return {k: (torch.tensor([4, 2, 1]) if k.endswith("dge.splits")
                else torch.randn(shape, generator=generator)) for k, shape in keys.items()}


@pytest.mark.parametrize("name,expected,count", [
    ("deit_dge_s124_small_patch16_256", deit_dge_keys(384), 212),
    ("deit_dge_s124_tiny_patch16_256", deit_dge_keys(192), 212),
    ("pvt_dge_s124_small_256", pvt_keys((3, 4, 6, 3)), 349),
    ("pvt_dge_s124_tiny_256", pvt_keys((2, 2, 2, 2)), 185),
    ("pvt_small_256", pvt_keys((3, 4, 6, 3), dge=False), 301),
])
def test_keys_and_shapes_match_the_original(name, expected, count):
    model = timm.create_model(name)
    assert _shapes(model) == expected
    assert len(expected) == count
    assert model.state_dict()["cls_token"].dtype == torch.float32


@pytest.mark.parametrize("name,count", [("pvt_dge_s124_medium_256", 601), ("pvt_dge_s124_large_256", 874),
                                        ("pvt_medium_256", 517), ("pvt_large_256", 751),
                                        ("pvt_tiny_256", 161)])
def test_key_counts_of_the_larger_pvts(name, count):
    assert len(timm.create_model(name).state_dict()) == count


@pytest.mark.parametrize("name,expected", [("deit_dge_s124_small_patch16_256", deit_dge_keys(384)),
                                           ("pvt_dge_s124_small_256", pvt_keys((3, 4, 6, 3)))])
def test_a_state_dict_with_exactly_those_keys_loads_strictly(name, expected, tmp_path, generator):
    state = _random_state(expected, generator)
    training = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "optimizer": {}, "epoch": 3,
                "args": argparse.Namespace(dge_budget=0.5, model=name)}, training)
    save_file(state, str(tmp_path / "raw.safetensors"))
    torch.save(state, tmp_path / "raw.pth")
    for path in (training, tmp_path / "raw.safetensors", tmp_path / "raw.pth"):
        model = timm.create_model(name)
        report = load_checkpoint(model, path)
        assert sorted(report.loaded) == sorted(expected)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key].to(value.dtype)), key


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": torch.zeros(1)}, "payload": _Payload()}, handle)
    with pytest.raises(CheckpointError, match=r"evil.pth holds objects that are not safe to unpickle"):
        read_state_dict(path)


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path, generator):
    model = small_vit(phi=(1, 2), dtype=torch.float32)
    state = model.state_dict()
    state.pop("blocks.1.attn.q.bias")
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["head.weight"] = torch.zeros(11, 48)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, state)
    message = str(error.value)
    assert "missing: blocks.1.attn.q.bias" in message
    assert "unexpected: blocks.0.extra.weight" in message
    assert "shape mismatch: head.weight (11, 48) vs model (10, 48)" in message
    report = load_checkpoint(model, state, partial=True)
    assert report.missing == ["blocks.1.attn.q.bias"] and "head.weight" not in report.loaded


def test_split_sizes_of_a_checkpoint_must_match(generator):
    model = small_vit(phi=(1, 2), dtype=torch.float32)
    state = model.state_dict()
    state["blocks.0.dge.splits"] = torch.tensor([4, 2])
    with pytest.raises(CheckpointError, match=r"blocks.0.dge.splits holds split sizes \(4, 2\).*\(2, 1\)"):
        load_checkpoint(model, state)


def test_dense_timm_checkpoint_into_a_dge_model(tmp_path, generator):
    dense = timm.create_model("deit_tiny_patch16_224", img_size=64, patch_size=8, depth=2)
    dge = small_vit(phi=(1, 2), dim=192, heads=3, dtype=torch.float32, num_classes=1000)
    path = tmp_path / "dense.safetensors"
    save_file(dense.state_dict(), str(path))
    routers = {k: v.clone() for k, v in dge.state_dict().items() if ".dge." in k}
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(dge, path)
    assert str(error.value) == (
        f"checkpoint {path} holds no DGE router weights (a dense model's checkpoint) but DGEVisionTransformer has "
        "routers in 2 blocks: start them from their initialisation with --fresh-routers (Python: "
        "fresh_routers=True); their gating maps mean nothing until trained (dge-explain train)")
    report = load_checkpoint(dge, path, fresh_routers=True)
    assert report.initialised == list(routers) and len(routers) == 6
    assert all(torch.equal(dge.state_dict()[k], v) for k, v in routers.items()), "routers as initialised"
    assert any("blocks.0.attn.qkv.weight -> blocks.0.attn.q.weight" in c for c in report.converted)
    qkv = dense.state_dict()["blocks.1.attn.qkv.weight"]
    assert torch.equal(dge.state_dict()["blocks.1.attn.kv.weight"], qkv[192:])


def test_positional_embeddings_are_resampled(tmp_path):
    dense = timm.create_model("deit_tiny_patch16_224", depth=1)
    model = timm.create_model("deit_tiny_patch16_224", depth=1, img_size=256)
    report = load_checkpoint(model, dense.state_dict())
    assert report.converted == ["pos_embed (1, 197, 192) -> (1, 257, 192) (bicubic)"]


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing.pth does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"bad.safetensors is not a readable safetensors file"):
        read_state_dict(bad)
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match=r"nostate.pth holds no state dict.*\['epoch'\]"):
        read_state_dict(tmp_path / "nostate.pth")


def test_a_dense_checkpoint_with_other_problems_names_both_options(tmp_path):
    dense = timm.create_model("deit_tiny_patch16_224", img_size=64, patch_size=8, depth=2)
    dge = small_vit(phi=(1, 2), dim=192, heads=3, dtype=torch.float32, num_classes=1000)
    path = tmp_path / "dense_distilled.pth"
    torch.save({**dense.state_dict(), "head_dist.weight": torch.zeros(1000, 192)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(dge, path)
    assert str(error.value) == (
        f"checkpoint {path} holds no DGE router weights (a dense model's checkpoint) but DGEVisionTransformer has "
        "routers in 2 blocks: start them from their initialisation with --fresh-routers (Python: "
        "fresh_routers=True); their gating maps mean nothing until trained (dge-explain train); unexpected: "
        "head_dist.weight. Load the matching keys anyway with --partial (Python: partial=True)")
    report = load_checkpoint(dge, path, fresh_routers=True, partial=True)
    assert report.unexpected == ["head_dist.weight"] and report.missing == [] and len(report.initialised) == 6


def test_an_extra_key_is_named_with_both_ways_to_load_the_rest(tmp_path):
    model = small_vit(phi=(1, 2), dtype=torch.float32)
    path = tmp_path / "extra.safetensors"
    save_file({**model.state_dict(), "head_dist.weight": torch.zeros(10, 48)}, str(path))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(small_vit(phi=(1, 2), dtype=torch.float32), path)
    assert str(error.value) == (f"checkpoint {path} does not fit DGEVisionTransformer: unexpected: head_dist.weight. "
                                "Load the matching keys anyway with --partial (Python: partial=True)")
    fresh = small_vit(phi=(1, 2), dtype=torch.float32)
    assert load_checkpoint(fresh, path, partial=True).unexpected == ["head_dist.weight"]
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("wrap,prefix,wrapper", [
    (torch.nn.DataParallel, "module.", "DistributedDataParallel or DataParallel"),
    (torch.compile, "_orig_mod.", "torch.compile")])
def test_a_wrapped_models_state_dict_loads_with_its_prefix_removed(wrap, prefix, wrapper, tmp_path):
    model = small_vit(phi=(1, 2), dtype=torch.float32)
    state = wrap(model).state_dict()
    assert all(k.startswith(prefix) for k in state)
    path = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 1}, path)
    fresh = small_vit(phi=(1, 2), dtype=torch.float32)
    report = load_checkpoint(fresh, path)
    assert report.converted == [f"prefix '{prefix}' removed from all {len(state)} keys "
                                f"(a state dict saved through {wrapper})"]
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_prefix_on_some_keys_only_is_named(tmp_path):
    model = small_vit(phi=(1, 2), dtype=torch.float32)
    state = model.state_dict()
    state["module.head.bias"] = state.pop("head.bias")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, state)
    assert str(error.value) == (
        "checkpoint <state dict> does not fit DGEVisionTransformer: missing: head.bias; unexpected: "
        f"module.head.bias; 1 of {len(state)} keys start with 'module.' (as DistributedDataParallel or "
        "DataParallel saves them) and the rest do not, so the prefix was left on (e.g. module.head.bias). "
        "Load the matching keys anyway with --partial (Python: partial=True)")


class _OrderedSubclass(collections.OrderedDict):
    pass


class _Custom:
    pass


def _qualified(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_unsafe_pickle_refusal_names_every_refused_global(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _OrderedSubclass(a=1), "custom": _Custom(),
                "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    names = ", ".join(sorted([_qualified(_OrderedSubclass), _qualified(_Custom)]))
    assert str(error.value) == (
        f"{path} holds objects that are not safe to unpickle (refused globals: {names}); only tensors, "
        "containers and argparse.Namespace are read. If you trust the file, save its state dict again "
        "(e.g. as .safetensors)")


def test_without_a_listing_the_refused_global_comes_from_torchs_message(tmp_path, monkeypatch):
    path = tmp_path / "custom.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "custom": _Custom()}, path)

    def unlisted(path):
        raise ValueError("no listing")

    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", unlisted)
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    message = str(error.value)
    assert "\x1b" not in message
    assert message == (f"{path} holds objects that are not safe to unpickle (refused global: {_qualified(_Custom)}); "
                       "only tensors, containers and argparse.Namespace are read. If you trust the file, save its "
                       "state dict again (e.g. as .safetensors)")


def test_a_refused_pickle_leaves_no_torch_warning(tmp_path):
    """torch warns, naming its own source line, about any pickle protocol but 2."""
    path = tmp_path / "protocol4.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": torch.zeros(1)}, "payload": _Payload()}, handle, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as error:
            read_state_dict(path)
    assert [str(w.message) for w in caught] == []
    assert str(error.value) == (
        f"{path} holds objects that are not safe to unpickle (torch's weights-only unpickler: Unsupported operand "
        "149); only tensors, containers and argparse.Namespace are read. If you trust the file, save its state "
        "dict again (e.g. as .safetensors)")
