"""The backbone adapters (dge_explain/models/families): every family's adapter
answers what its models do (checked with hooks on a real forward), unknown models
are refused by name, and the package's modules import without cycles."""
import ast
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dge_explain.models import PyramidVisionTransformer, dge_modules
from dge_explain.models.families import FAMILIES, adapter_for, find_adapter

from helpers import small_dpvt, small_pvt, small_vit

PACKAGE = Path(__file__).resolve().parents[1] / "dge_explain"


def _models():
    dense_vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    return {"vit (DGE)": (small_vit(dtype=torch.float32), "vit", 64),
            "vit (dense)": (dense_vit, "vit", 64),
            "pvt (DGE)": (small_pvt(depths=(1, 1, 2, 2), dtype=torch.float32), "pvt", 128),
            "pvt (dense)": (small_pvt(phi=None, depths=(1, 1, 2, 2), dtype=torch.float32), "pvt", 128),
            "dpvt (DGE)": (small_dpvt(phi=(1, 2, 4), depths=(1, 1, 2, 2), dtype=torch.float32), "dpvt", 128),
            "dpvt (dense)": (small_dpvt(phi=None, depths=(1, 1, 2, 2), dtype=torch.float32), "dpvt", 128)}


@pytest.mark.parametrize("name", list(_models()))
def test_the_adapter_answers_what_the_model_does(name):
    model, family, size = _models()[name]
    model.eval()
    adapter = adapter_for(model)
    assert adapter.family == family
    blocks = adapter.blocks(model)
    seen = {}
    hooks = [b.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].shape[1]))
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    assert sorted(seen) == list(range(len(blocks))), "blocks() must list every block the forward runs"
    inputs = adapter.block_inputs(model, (size, size))
    assert [b for b, _, _ in inputs] == blocks
    assert [n for _, n, _ in inputs] == [seen[i] for i in range(len(blocks))]
    extra, grid, stride = adapter.last_tokens(model, (size, size))
    assert extra + grid[0] * grid[1] == seen[len(blocks) - 1] and grid == (size // stride, size // stride)
    last_stage, earlier, cam_stride = adapter.cam_layers(model)
    assert earlier + last_stage == blocks and cam_stride == stride
    if dge_modules(model):
        first = dge_modules(model)[0]
        assert adapter.image_size(model, first.routing.grid) == (size, size)
    assert adapter.stem_macs(model, size * size, "matmul") > 0


def test_each_family_claims_its_own_models_only():
    for model, family, _ in _models().values():
        assert [a.family for a in FAMILIES if a.matches(model)][0] == family
    assert find_adapter(nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match=r"Linear belongs to no known backbone family \(dpvt, pvt, vit\): add an adapter "
                                         r"under dge_explain/models/families/"):
        adapter_for(nn.Linear(2, 2))
    assert adapter_for(small_pvt()).token_attention_refusal and adapter_for(small_vit()).token_attention_refusal is None
    assert "bilinearly sampled points" in adapter_for(small_dpvt()).token_attention_refusal
    assert isinstance(small_pvt(), PyramidVisionTransformer)


def _imports(path: Path) -> set[str]:
    """dge_explain modules a file imports, at any depth (function-level imports too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("dge_explain")}
    return found


def test_the_package_has_no_import_cycle():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {name: {n for n in _imports(path) if n in files and n != name} for name, path in files.items()}
    # a package's __init__ imported by its own submodules is how Python resolves them, not a cycle
    graph = {name: {n for n in edges if not name.startswith(n + ".")} for name, edges in graph.items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# The package's layers, lowest first: a module imports only from its own layer or
# below (the package root, a lazy facade, aside).  A new top-level module or
# subpackage must be placed here.
LAYERS = (
    {"paths", "console", "methods"},            # torch-free helpers and the method registry
    {"ops"},                                    # the compiled ops and their references
    {"models", "complexity", "distributed"},    # DGE models, their MACs, the process group
    {"data", "zoo", "explainers"},              # reading data, shipped models, the explainers
    {"evaluation", "training"},                 # scoring maps and runs; distilling routers
    {"api"},                                    # load_model, explain, score
    {"viz"},                                    # drawing and the figures of runs
    {"explain_images", "bench"},                # jobs: explaining folders, benchmarks
    {"cli", "__main__"},                        # the command line
)


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_no_import_runs_upward():
    layer = {name: index for index, names in enumerate(LAYERS) for name in names}
    tops = {_top(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.glob("*")
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    unplaced = sorted(tops - set(layer) - {"__init__", "_C"})
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = _top(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if source == "__init__":
            continue   # the root facade imports lazily, for the user
        for target in {_top(n) for n in _imports(path)} - {"dge_explain", source}:
            if target in layer and layer[target] > layer[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports dge_explain.{target}")
    assert not upward, "imports that run upward: " + "; ".join(sorted(upward))
