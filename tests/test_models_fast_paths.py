"""The uniform-routing fast paths of the DGE (eval mode): a batch whose regions
all took one option skips the patch table (every region finest: the plain dense
block; every region split k x k: one pass over the grid pooled with the sub-patch
step) and gives what the sparse path gives (float64); a batch mixed across its
samples, training, and an attention capture keep the packed path."""
import pytest
import torch

from dge_explain import ops
from dge_explain.explainers.attention_capture import attention_pass
from dge_explain.models import dge_modules, force_gates
from dge_explain.ops.reference import reference_table

from helpers import fast_and_sparse, mixed_routing, small_dpvt, small_pvt, small_vit, used_options

BUILDS = {"deit": (small_vit, 64), "pvt": (small_pvt, 128), "dpvt": (small_dpvt, 128)}


def _per_sample(options: list[int]):
    """Gates: every region of sample b takes options[b]."""
    def choose(logits):
        chosen = torch.tensor(options, device=logits.device).view(-1, 1, 1)
        return chosen.expand(logits.shape[:-1]).contiguous()
    return choose


@pytest.fixture
def routed(monkeypatch):
    """The routings the next forwards build (one entry per sparse DGE block call)."""
    calls = []
    original = ops.route_to_patches

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "route_to_patches", counting)
    return calls


@pytest.mark.parametrize("family", list(BUILDS))
@pytest.mark.parametrize("phi", [(1, 2), (1, 2, 4), (2, 4)])
def test_uniform_batches_skip_the_table_and_equal_the_sparse_path(family, phi, generator, routed):
    build, size = BUILDS[family]
    model = build(phi=phi).eval()
    blocks = len(dge_modules(model))
    images = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    for option in range(len(phi)):
        routed.clear()
        fast, sparse = fast_and_sparse(model, images, _per_sample([option, option]))
        assert len(routed) == blocks, f"option {option}: the fast path built a table"   # the sparse run's only
        assert (fast - sparse).abs().max() <= 1e-12, f"option {option}"


@pytest.mark.parametrize("family", list(BUILDS))
def test_a_batch_mixed_across_samples_takes_the_sparse_path(family, generator, routed):
    build, size = BUILDS[family]
    model = build(phi=(1, 2, 4)).eval()
    blocks = len(dge_modules(model))
    images = torch.randn(3, 3, size, size, generator=generator, dtype=torch.float64)
    fast, sparse = fast_and_sparse(model, images, _per_sample([0, 2, 1]))
    assert len(routed) == 2 * blocks
    assert (fast - sparse).abs().max() == 0
    # each sample alone is uniform: its fast path gives its row of the mixed batch
    for b, option in enumerate([0, 2, 1]):
        alone, _ = fast_and_sparse(model, images[b:b + 1], _per_sample([option]))
        assert (alone[0] - sparse[b]).abs().max() <= 1e-12


def test_training_keeps_its_path(generator, routed):
    model = small_vit(phi=(1, 2)).train()
    for dge in dge_modules(model):
        dge.sparse_train = True
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with force_gates(model, "coarsest"):
        model(images)
    assert len(routed) == len(dge_modules(model))


def test_the_extreme_row_counts_decide_without_the_gates(generator):
    """On CUDA the choice comes from the table's host-side row counts: only the
    all-finest and all-coarsest batches reach the extremes."""
    model = small_vit(phi=(1, 2, 4))
    dge = dge_modules(model)[0]
    grid = (8, 12)

    def decided(options):
        indices = torch.tensor(options).view(-1, 1, 1).expand(-1, 2, 3).clone()
        return dge._extreme_option(reference_table(indices, dge.split_sizes, dge.region_size, 1), grid, 1)

    assert decided([0, 0]) == 0
    assert decided([2, 2]) == 2
    assert decided([1, 1]) is None       # a middle option's count can also come from a mixture
    assert decided([0, 2]) is None
    mixed = torch.tensor([[[0, 2, 2], [2, 2, 2]]])   # 16 + 5 rows, neither extreme
    assert dge._extreme_option(reference_table(mixed, dge.split_sizes, dge.region_size, 1), grid, 1) is None


def test_attention_explainers_see_every_query_row(generator, routed):
    """attention_pass reads coarse queries through their patch table: the pooled
    path steps aside (finest blocks still run dense, as token rows), and the
    recorded attention is the sparse path's."""
    model = small_vit(phi=(1, 2), depth=3).eval()
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    records = []
    for fast in (True, False):
        for dge in dge_modules(model):
            dge.fast_paths = fast
        with force_gates(model, _per_sample([1, 1])):
            records.append(attention_pass(model, images, gradients="all"))
    assert len(routed) == 2 * 3
    for block in range(3):
        assert torch.equal(records[0].probs[block], records[1].probs[block])
        assert torch.equal(records[0].grads[block], records[1].grads[block])
    with force_gates(model, "finest"):
        for dge in dge_modules(model):
            dge.fast_paths = True
        dense = attention_pass(model, images, gradients="all")
        for dge in dge_modules(model):
            dge.fast_paths = False
        packed = attention_pass(model, images, gradients="all")
    for block in range(3):
        assert dense.tables[block] is None and packed.tables[block] is not None
        assert (dense.cls_rows(dense.probs[block], block)
                - packed.cls_rows(packed.probs[block], block)).abs().max() <= 1e-12
        assert (dense.cls_rows(dense.grads[block], block)
                - packed.cls_rows(packed.grads[block], block)).abs().max() <= 1e-12


def test_a_finest_option_of_several_tokens_keeps_the_table_for_explainers(generator, routed):
    """Phi = {2, 4}: the finest option pools 2 x 2 tokens, so under an attention
    capture even an all-finest batch keeps its patch table."""
    model = small_vit(phi=(2, 4), depth=2).eval()
    images = torch.randn(1, 3, 64, 64, generator=generator, dtype=torch.float64)
    with force_gates(model, "finest"):
        record = attention_pass(model, images)
    assert len(routed) == 2 and all(table is not None for table in record.tables)


@pytest.mark.parametrize("step", [2, 4])
def test_pooled_queries_and_restore_are_compress_and_restore_of_a_uniform_table(step, generator):
    batch, grid, extra, channels = 2, (8, 12), 2, 5
    x = torch.randn(batch, extra + grid[0] * grid[1], channels, generator=generator, dtype=torch.float64)
    indices = torch.zeros(batch, grid[0] // 4, grid[1] // 4, dtype=torch.long) + (1 if step == 2 else 2)
    table = reference_table(indices, (4, 2, 1), 4, extra)
    packed = ops.compress(x, table)
    pooled = ops.pooled_queries(x, grid, step, extra)
    assert pooled.shape == (batch, extra + grid[0] * grid[1] // step ** 2, channels)
    # the packed rows are region-major: match them to the raster order by their corners
    rows = table.rows.long()
    spatial = rows[:, 1] >= 0
    raster = (rows[:, 1] // step) * (grid[1] // step) + rows[:, 2] // step + extra
    position = torch.where(spatial, raster, -rows[:, 1] - 1)
    assert (pooled[rows[:, 0], position] - packed).abs().max() <= 1e-14
    updated = torch.randn(pooled.shape, generator=generator, dtype=torch.float64)
    restored = ops.pooled_restore(x, updated, pooled, grid, step, extra)
    expected = ops.restore(x, updated[rows[:, 0], position], packed, table)
    assert (restored - expected).abs().max() <= 1e-14


def test_a_single_image_attends_through_torch_and_equals_the_varlen_kernel(generator, monkeypatch):
    """Batch 1: the packed rows are one sample's queries, which PyTorch's fused
    attention takes as they are; the image's output equals its row of a two-image
    batch, which goes through the varlen kernel."""
    calls = []
    original = ops.varlen_attention
    monkeypatch.setattr(ops, "varlen_attention", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    model = small_vit(phi=(1, 2, 4), depth=3).eval()
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)

    with torch.no_grad(), force_gates(model, mixed_routing):
        alone = model(images[:1])
        assert not calls and used_options(model) == {0, 1, 2}
        both = model(images)
    assert len(calls) == 3
    assert (alone[0] - both[0]).abs().max() <= 1e-12


@pytest.mark.parametrize("family", list(BUILDS))
def test_gradients_through_the_pooled_path_equal_the_sparse_path(family, generator):
    """Eval mode with gradients (the CAM explainers' backward): the pooled pass
    differentiates as the packed one does."""
    build, size = BUILDS[family]
    model = build(phi=(1, 2, 4)).eval()
    images = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        for dge in dge_modules(model):
            dge.fast_paths = fast
        inputs = images.clone().requires_grad_(True)
        with force_gates(model, "coarsest"):
            model(inputs).square().sum().backward()
        grads.append(inputs.grad)
    assert (grads[0] - grads[1]).abs().max() <= 1e-12 * max(1.0, float(grads[1].abs().max()))


def test_an_all_finest_deit_is_its_dense_original_and_follows_weight_changes(generator):
    """The dense fast path projects q, k, v in one matmul as timm's block does: the
    same numbers as the dense model; the fused weight follows in-place changes and
    passes gradients to q and kv."""
    import timm

    from dge_explain.models import from_dense

    dense = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=2).double().eval()
    model = from_dense(dense, phi=(1, 2)).eval()
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with force_gates(model, "finest"):
        with torch.no_grad():
            assert torch.equal(model(images), dense(images))
            for block, original in zip(model.blocks, dense.blocks):
                block.attn.kv.weight.mul_(1.5)
                original.attn.qkv.weight[original.attn.qkv.in_features:].mul_(1.5)
            assert torch.equal(model(images), dense(images))
        model(images).sum().backward()
    dense(images).sum().backward()
    for block, original in zip(model.blocks, dense.blocks):
        fused = torch.cat([block.attn.q.weight.grad, block.attn.kv.weight.grad])
        assert (fused - original.attn.qkv.weight.grad).abs().max() <= 1e-10


def test_a_model_built_under_inference_mode_runs_the_dense_fast_path(generator):
    """Parameters made under torch.inference_mode are inference tensors, which keep
    no version counter: the fused q/kv weight is concatenated afresh for them (the
    profiler built its models so and failed) and gives the dense model's numbers."""
    import timm

    from dge_explain.models import from_dense

    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with torch.inference_mode():
        dense = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=2).double().eval()
        model = from_dense(dense, phi=(1, 2)).eval()
        assert model.blocks[0].attn.q.weight.is_inference()
        with force_gates(model, "finest"):
            assert torch.equal(model(images), dense(images))
