"""dge-explain: run, explain and benchmark Dynamic Grained Encoder vision transformers."""

__version__ = "0.1.0"


def load_model(name: str, weights=None, home=None, device="cpu", trained=None):
    """A shipped DGE model, e.g. load_model("deit_tiny_dge_s12") (see dge_explain.zoo)."""
    from dge_explain.zoo import load_model as load

    return load(name, weights=weights, home=home, device=device, trained=trained)
