"""CUDA kernels against the reference (float32, float16, bfloat16 with float32
accumulation, and float64): on a GPU where one is visible, and everywhere through
the CUDA emulation (tests/emulation.py: the same kernel sources built as host
code, every CUDA thread a coroutine), with CPU tensors standing for the device's."""
import pytest
import torch

from dge_explain import ops
from dge_explain.ops import fused_attention, reference
from dge_explain.ops.selfcheck import TOLERANCE, check_all, off_grid_points, random_case

from conftest import poisoned_outputs, requires_cuda
from emulation import emulated_cuda

pytestmark = pytest.mark.cuda
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=requires_cuda)])
def device(request):
    """The device the kernels' tensors live on: a GPU (the project's own kernels, not
    PyTorch's fused attention: tests/test_ops_fused.py), or the CPU under the emulation."""
    if request.param == "cuda":
        with fused_attention.fused_kernels(False):
            yield "cuda"
    else:
        with emulated_cuda():
            yield "cpu"


@requires_cuda
def test_extension_has_cuda_kernels():
    assert ops.build_info()["compiled_cuda"], "extension built without CUDA kernels"


@pytest.mark.parametrize("dtype", DTYPES)
def test_selfcheck(dtype, device):
    failed = [r for r in check_all(device, dtype) if not r.passed]
    assert not failed, failed


@pytest.mark.parametrize("splits", [(2, 1), (4, 2, 1), (4, 1)])
@pytest.mark.parametrize("batch,grid,num_extra,channels", [(1, (1, 1), 0, 5), (3, (2, 3), 1, 13),
                                                           (4, (4, 4), 2, 192)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_matches_reference(splits, batch, grid, num_extra, channels, dtype, generator, device):
    case = random_case(batch, grid, splits, num_extra, channels, dtype, device, generator)
    ref = reference.reference_table(case.indices.cpu(), splits, case.region_size, num_extra)
    for got, want in zip((case.table.rows, case.table.region_start, case.table.region_k,
                          case.table.offsets, case.table.lengths),
                         (ref.rows, ref.region_start, ref.region_k, ref.offsets, ref.lengths)):
        assert torch.equal(got.cpu(), want)
    assert case.table.lengths.device.type == "cpu"
    x64 = case.x.double().cpu()
    with poisoned_outputs():
        comp = ops.compress(case.x, case.table)
        q2 = torch.randn_like(comp)
        restored = ops.restore(case.x, q2, comp, case.table)
    tol = TOLERANCE[dtype]
    assert (comp.double().cpu() - reference.compress(x64, ref)).abs().max() <= tol
    want = reference.restore(x64, q2.double().cpu(), comp.double().cpu(), ref)
    assert not torch.isnan(restored).any()
    assert (restored.double().cpu() - want).abs().max() <= tol * max(1.0, float(want.abs().max()))


def test_routing_more_regions_than_a_block_has_threads(generator, device):
    """17 x 16 regions per sample: the table kernel's block scan runs over two
    chunks of 256 regions, carrying the first chunk's rows into the second; every
    element of the table is written (poisoned outputs)."""
    splits, num_extra = (2, 1), 1
    indices = torch.randint(0, len(splits), (3, 17, 16), generator=generator).to(device)
    with poisoned_outputs():
        table = ops.route_to_patches(indices, splits, 2, num_extra)
    ref = reference.reference_table(indices.cpu(), splits, 2, num_extra)
    for name in ("rows", "region_start", "region_k", "offsets", "lengths"):
        assert torch.equal(getattr(table, name).cpu(), getattr(ref, name)), name
    x = torch.randn(3, num_extra + 34 * 32, 8, generator=generator, dtype=torch.float64)
    with poisoned_outputs():
        comp = ops.compress(x.float().to(device), table)
    assert (comp.double().cpu() - reference.compress(x, ref)).abs().max() <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_of_tensors_not_aligned_to_a_pack(dtype, generator, device):
    """Contiguous inputs that start one element past a 16-byte boundary (views into
    a larger buffer), with C a multiple of every dtype's pack: the kernels must take
    their scalar path and still match the reference."""
    case = random_case(2, (2, 2), (2, 1), 1, 16, dtype, device, generator)

    def misaligned(t):
        buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = buffer[1:].view(t.shape)
        view.copy_(t)
        assert view.is_contiguous() and view.data_ptr() % 16 != 0
        return view

    ref = reference.reference_table(case.indices.cpu(), case.split_sizes, case.region_size, case.num_extra)
    x64 = case.x.double().cpu()
    with poisoned_outputs():
        comp = ops.compress(misaligned(case.x), case.table)
        q2 = misaligned(torch.randn_like(comp))
        restored = ops.restore(misaligned(case.x), q2, misaligned(comp), case.table)
    tol = TOLERANCE[dtype]
    assert (comp.double().cpu() - reference.compress(x64, ref)).abs().max() <= tol
    want = reference.restore(x64, q2.double().cpu(), comp.double().cpu(), ref)
    assert (restored.double().cpu() - want).abs().max() <= tol * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths,heads,head_dim,keys", [
    ([5], 1, 8, 7), ([17, 3], 3, 64, 257), ([1, 40, 9, 12], 2, 13, 50), ([300, 0, 70], 6, 128, 65)])
def test_attention_matches_reference(dtype, lengths, heads, head_dim, keys, generator, device):
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64)
    q64, k64, v64 = randn(int(offsets[-1]), heads, head_dim), randn(len(lengths), heads, keys, head_dim), \
        randn(len(lengths), heads, keys, head_dim)
    q, k, v = (t.to(device, dtype, copy=True).requires_grad_() for t in (q64, k64, v64))
    with poisoned_outputs():
        out = ops.varlen_attention(q, k, v, offsets.to(device))
        grad = torch.randn_like(out)
        out.backward(grad)
    refs = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    want = reference.varlen_attention(*refs, offsets, head_dim ** -0.5)
    want.backward(grad.double().cpu())
    tol = TOLERANCE[dtype] * 5
    assert (out.double().cpu() - want).abs().max() <= tol
    for got, expected in zip((q, k, v), refs):
        assert not torch.isnan(got.grad).any()
        scale = max(1.0, float(expected.grad.abs().max()))
        assert (got.grad.double().cpu() - expected.grad).abs().max() <= tol * scale


@requires_cuda
def test_ops_follow_the_current_stream(generator):
    case = random_case(4, (8, 8), (4, 2, 1), 1, 384, torch.float32, "cuda", generator)
    expected = ops.compress(case.x, case.table)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x = case.x * 1.0  # produced on the side stream
        comp = ops.compress(x, case.table)
        table = ops.route_to_patches(case.indices, (4, 2, 1), 4, 1)
        restored = ops.restore(x, comp * 2, comp, table)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(comp, expected)
    torch.testing.assert_close(restored, case.x + ops.decompress(expected, case.table))


def _attention_inputs(device, lengths=(3, 2), heads=2, head_dim=8, keys=7):
    randn = lambda *shape: torch.randn(*shape).to(device)
    return randn(sum(lengths), heads, head_dim), randn(len(lengths), heads, keys, head_dim), \
        randn(len(lengths), heads, keys, head_dim)


@pytest.mark.parametrize("bad", [[0, 3, 6], [0, 6, 5], [1, 3, 5]])
def test_the_kernels_refuse_offsets_that_do_not_bound_their_queries(device, bad):
    """Called directly (past the Python wrapper), forward and backward check the
    offsets' values: with offsets[B] > L the dK/dV kernel would read past q."""
    from dge_explain.ops import _backend

    q, k, v = _attention_inputs(device)
    good = torch.tensor([0, 3, 5], device=device)
    out, lse = _backend.kernels().varlen_attention_forward(q, k, v, good, 0.35, True)
    offsets = torch.tensor(bad, device=device)
    with pytest.raises(ValueError, match="offsets must (run from 0 to L = 5|be non-decreasing)"):
        _backend.kernels().varlen_attention_forward(q, k, v, offsets, 0.35, True)
    with pytest.raises(ValueError, match="offsets must (run from 0 to L = 5|be non-decreasing)"):
        _backend.kernels().varlen_attention_backward(torch.ones_like(out), q, k, v, out, lse, offsets, 0.35)


def test_the_cuda_limits_are_value_errors_before_and_inside_the_kernels(device):
    from dge_explain.ops import _backend

    limits = ops.build_info()["cuda_limits"]
    assert limits == {"head_dim": 128, "heads": 65535}
    offsets = torch.tensor([0, 3, 5], device=device)
    for heads, head_dim in ((2, limits["head_dim"] + 1), (limits["heads"] + 1, 1)):
        q, k, v = _attention_inputs(device, heads=heads, head_dim=head_dim, keys=2)
        with pytest.raises(ValueError, match=f"varlen_attention on CUDA supports head dim <= 128 and at most "
                                             f"65535 heads, got q \\(5, {heads}, {head_dim}\\)"):
            ops.varlen_attention(q, k, v, offsets)
        with pytest.raises(ValueError, match="varlen_attention on CUDA supports (head dim <= 128|at most 65535 heads)"):
            _backend.kernels().varlen_attention_forward(q, k, v, offsets, 1.0, False)


@pytest.mark.parametrize("case", ["no samples", "no queries", "strided k and v"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_edge_cases(case, dtype, device, generator):
    """B = 0; L = 0 with two samples (dK and dV are all zero, and written); k and v
    as strided views of a fused [B, Nk, 2, h, d] projection."""
    heads, head_dim, keys = 2, 16, 9
    lengths = {"no samples": [], "no queries": [0, 0], "strided k and v": [4, 0, 6]}[case]
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()])
    q64 = torch.randn(int(offsets[-1]), heads, head_dim, generator=generator, dtype=torch.float64)
    kv64 = torch.randn(len(lengths), keys, 2, heads, head_dim, generator=generator, dtype=torch.float64)
    kv = kv64.to(device, dtype, copy=True).requires_grad_()
    q = q64.to(device, dtype, copy=True).requires_grad_()
    if case == "strided k and v":
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        assert not k.is_contiguous() and k.stride(-1) == 1
    else:
        k, v = kv[:, :, 0].transpose(1, 2).contiguous(), kv[:, :, 1].transpose(1, 2).contiguous()
    with poisoned_outputs():
        out = ops.varlen_attention(q, k, v, offsets.to(device))
        (out.double() * 1.5).sum().backward()
    ref_q, ref_kv = q64.clone().requires_grad_(), kv64.clone().requires_grad_()
    want = reference.varlen_attention(ref_q, ref_kv[:, :, 0].transpose(1, 2), ref_kv[:, :, 1].transpose(1, 2),
                                      offsets, head_dim ** -0.5)
    (want * 1.5).sum().backward()
    assert out.shape == want.shape
    largest = lambda t: float(t.detach().abs().max()) if t.numel() else 0.0
    tol = TOLERANCE[dtype] * 5
    assert largest(out.double().cpu() - want) <= tol
    for got, expected in ((q.grad, ref_q.grad), (kv.grad, ref_kv.grad)):
        expected = torch.zeros_like(kv64) if expected is None else expected   # B = 0: k, v unused
        assert got.shape == expected.shape and not torch.isnan(got).any()
        assert largest(got.double().cpu() - expected) <= tol * max(1.0, largest(expected))


@pytest.mark.parametrize("lengths,height,width,heads,dim,points", [
    ([5], 1, 1, 1, 1, 1), ([7, 0, 3], 4, 6, 2, 40, 4), ([33], 3, 5, 3, 64, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deformable_attention_matches_reference(lengths, height, width, heads, dim, points, dtype, generator,
                                                device):
    """Partial and several warps of channels, empty samples, a 1 x 1 map, points
    outside the map; gradients too (the value gradient's atomics into fp32)."""
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    rows = int(offsets[-1])
    value = torch.randn(len(lengths), height, width, heads, dim, generator=generator, dtype=torch.float64)
    locations = off_grid_points(rows, heads, points, (height, width), 2.0, generator)
    weights = torch.rand(rows, heads, points, generator=generator, dtype=torch.float64).softmax(-1)
    inputs = [t.to(device, dtype).requires_grad_() for t in (value, locations, weights)]
    with poisoned_outputs():
        out = ops.deformable_attention(*inputs, offsets.to(device))
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    with poisoned_outputs():
        out.backward(grad.to(device, dtype))
    ref_inputs = [t.detach().double().cpu().requires_grad_() for t in inputs]
    want = reference.deformable_attention(*ref_inputs, offsets)
    want.backward(grad)
    tol = TOLERANCE[dtype]
    scale = lambda t: max(1.0, float(t.abs().max()))
    assert (out.double().cpu() - want).abs().max() <= tol * scale(want)
    for got, expected in zip(inputs, ref_inputs):
        assert (got.grad.double().cpu() - expected.grad).abs().max() <= tol * scale(expected.grad)
