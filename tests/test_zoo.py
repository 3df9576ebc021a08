"""The shipped DGE-DeiT-Tiny: what the package holds, how it loads, what it does."""
import pytest
import torch
from safetensors.torch import load_file

from dge_explain import load_model, zoo
from dge_explain.zoo.build import recipe
from dge_explain.models import CheckpointError, dge_modules

from conftest import shared_file


def test_the_shipped_file_holds_routers_norms_and_biases_only():
    trained = load_file(str(zoo.trained_file("deit_tiny_dge_s12")))
    routers = [k for k in trained if ".dge.router.gate." in k]
    assert len(routers) == 24                         # weight and bias of 12 routers
    assert all(k.endswith(".bias") or ".norm" in k or ".dge.router." in k or k.startswith("norm.")
               for k in trained)
    assert sum(v.numel() for v in trained.values()) * 4 < 2 * 2**20   # under 2 MB
    stored = recipe("deit_tiny_dge_s12")
    assert stored["gamma"] == 0.5 and stored["phi"] == [1, 2]


def test_load_model_with_the_shared_weights():
    weights = shared_file("weights/deit_tiny_patch16_224.safetensors")
    model = load_model("deit_tiny_dge_s12", weights=weights)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, 1000)
    fine = [dge.routing.gates[..., 0].mean().item() for dge in dge_modules(model)]
    assert fine[0] > fine[-1], "the trained routers keep early layers finer than late ones"


def test_unknown_model_and_broken_trained_file(tmp_path):
    with pytest.raises(ValueError, match="model 'deit_huge' has no trained weights unless you give a checkpoint"):
        load_model("deit_huge")
    with pytest.raises(ValueError, match="unknown model 'deit_huge': neither shipped"):
        load_model("deit_huge", random_weights=True)
    weights = shared_file("weights/deit_tiny_patch16_224.safetensors")
    trained = load_file(str(zoo.trained_file("deit_tiny_dge_s12")))
    trained.pop("blocks.3.dge.router.gate.bias")
    from safetensors.torch import save_file

    save_file(trained, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="lacks router parameters: \\['blocks.3.dge.router.gate.bias'\\]"):
        load_model("deit_tiny_dge_s12", weights=weights, trained=str(tmp_path / "partial.safetensors"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match=r"corrupt.safetensors is not a readable safetensors file"):
        load_model("deit_tiny_dge_s12", weights=weights, trained=str(tmp_path / "corrupt.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"trained parameters .*none.safetensors does not exist"):
        load_model("deit_tiny_dge_s12", trained=str(tmp_path / "none.safetensors"))
