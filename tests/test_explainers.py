"""The explainer league: every baseline on hand-set attention (raw attention and
rollout by hand, attention GradCAM and relevance on hand-given gradients), the
attention capture against autograd and against the reference op for DGE models,
the pytorch-grad-cam family on dense, DGE and PVT models, the registry, and one
shared pass per batch."""
import pytest
import timm
import torch
import torch.nn.functional as F

from dge_explain import ops
from dge_explain.explainers import CAMMaps, batch_maps, build_explainers, token_grid
from dge_explain.explainers.attention_capture import AttentionRecord, attention_pass, recording
from dge_explain.explainers.attention_gradcam import AttentionGradCAM
from dge_explain.explainers.gating import RECOMMENDED_LAYER, recommended_layer
from dge_explain.explainers.raw_attention import RawAttention
from dge_explain.explainers.relevance import Relevance
from dge_explain.explainers.rollout import Rollout
from dge_explain.methods import merge_methods, method_help, parse_method, registry, resolve_layers
from dge_explain.models import force_gates, from_dense
from dge_explain.models.attention import attention_probabilities, packed_products

from helpers import counting_calls, mixed_routing, randomise_routers, small_dpvt, small_pvt


def tiny_vit(**kwargs):
    """A ViT with 16-px patches, by default 32 x 32 pixels: cls + a 2 x 2 token grid."""
    settings = {"img_size": 32, "depth": 2, "num_classes": 5, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **settings).eval()


def _upsampled(grid_values, size=32):
    return F.interpolate(torch.as_tensor(grid_values, dtype=torch.float32).view(1, 1, 2, 2), size=(size, size),
                         mode="bilinear", align_corners=False)[0]


# Two blocks, two heads, five tokens (cls first); rows sum to 1.
A1 = torch.tensor([[[0.2, 0.4, 0.1, 0.2, 0.1]] + [[0.2] * 5] * 4,
                   [[0.6, 0.1, 0.1, 0.1, 0.1]] + [[0.2] * 5] * 4])
A2 = torch.tensor([[[0.1, 0.1, 0.5, 0.2, 0.1]] + [[0.0, 0.25, 0.25, 0.25, 0.25]] * 4,
                   [[0.3, 0.3, 0.1, 0.2, 0.1]] + [[1.0, 0.0, 0.0, 0.0, 0.0]] * 4])


def _record(grads=None):
    probs = [A1[None], A2[None]]
    return AttentionRecord(probs, grads, torch.zeros(1, 5), torch.zeros(1, dtype=torch.long))


def test_raw_attention_by_hand():
    images = torch.zeros(1, 3, 32, 32)
    got = RawAttention(tiny_vit()).map_from(_record(), images)
    # last block, mean of the heads' cls rows over the spatial tokens: (0.1+0.3)/2, (0.5+0.1)/2, ...
    torch.testing.assert_close(got, _upsampled([0.2, 0.3, 0.2, 0.1]))


def test_rollout_by_hand():
    images = torch.zeros(1, 3, 32, 32)
    got = Rollout(tiny_vit()).map_from(_record(), images)
    hat = []
    for a in (A1, A2):
        m = a.double().mean(0) + torch.eye(5, dtype=torch.float64)
        hat.append(m / m.sum(-1, keepdim=True))
    # cls row of A2_hat @ A1_hat: (A2_hat)[0] . A1_hat
    joint = hat[1] @ hat[0]
    expected = [float(joint[0, j]) for j in range(1, 5)]
    # first row of A1_hat: mean cls row (0.4, 0.25, 0.1, 0.15, 0.1) + e_0, halved: (0.7, .125, .05, .075, .05)
    assert torch.allclose(hat[0][0], torch.tensor([0.7, 0.125, 0.05, 0.075, 0.05], dtype=torch.float64))
    torch.testing.assert_close(got, _upsampled(expected))


def test_attention_gradcam_by_hand():
    grads = [torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5)]
    grads[1][0, 0, 0, 1:] = torch.tensor([1.0, 1.0, 2.0, 0.0])        # head 0: weight mean = 1
    grads[1][0, 1, 0, 1:] = torch.tensor([-2.0, -2.0, -2.0, -2.0])    # head 1: weight -2
    images = torch.zeros(1, 3, 32, 32)
    got = AttentionGradCAM(tiny_vit()).map_from(_record(grads), images)
    # mean over heads of weight_h * A2_h[cls, spatial], then ReLU:
    # head 0: 1 * (0.1, 0.5, 0.2, 0.1); head 1: -2 * (0.3, 0.1, 0.2, 0.1)
    expected = [max(0.0, (0.1 - 0.6) / 2), (0.5 - 0.2) / 2, (0.2 - 0.4) / 2, (0.1 - 0.2) / 2]
    torch.testing.assert_close(got, _upsampled([max(0.0, v) for v in expected]))


def test_relevance_by_hand():
    grads = [torch.ones(1, 2, 5, 5), -torch.ones(1, 2, 5, 5)]
    grads[1][0, 0, 0] = 2.0                                             # only head 0's cls row positive in block 2
    images = torch.zeros(1, 3, 32, 32)
    got = Relevance(tiny_vit()).map_from(_record(grads), images)
    # block 1: A_bar = mean_h (1 * A1)^+ = mean_h A1; R = I + A_bar
    r = torch.eye(5, dtype=torch.float64) + A1.double().mean(0)
    # block 2: (grad * A2)^+ is 2 * A2[head 0] on the cls row, 0 elsewhere; halved by the head mean
    bar = torch.zeros(5, 5, dtype=torch.float64)
    bar[0] = A2[0, 0].double()
    r = r + bar @ r
    torch.testing.assert_close(got, _upsampled([float(v) for v in r[0, 1:]]))


def test_rollout_and_relevance_equal_the_full_matrix_products(generator):
    """Four blocks of random attention and gradients: the cls row carried down equals
    the cls row of the product of the N x N matrices, as the definitions write it."""
    probs = [torch.rand(2, 3, 5, 5, generator=generator, dtype=torch.float64).softmax(-1) for _ in range(4)]
    grads = [torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64) for _ in range(4)]
    record = AttentionRecord(probs, grads, torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    images = torch.zeros(2, 3, 32, 32)
    eye = torch.eye(5, dtype=torch.float64)
    joint, relevance = eye, eye
    for a, g in zip(probs, grads):
        hat = a.mean(1) + eye
        joint = (hat / hat.sum(-1, keepdim=True)) @ joint
        relevance = relevance + (g * a).clamp(min=0).mean(1) @ relevance
    for explainer, matrix in ((Rollout(tiny_vit()), joint), (Relevance(tiny_vit()), relevance)):
        expected = torch.stack([_upsampled([float(v) for v in matrix[b, 0, 1:]])[0] for b in range(2)])
        torch.testing.assert_close(explainer.map_from(record, images), expected)


def test_a_model_whose_queries_are_zero_attends_uniformly_and_rolls_out_by_hand(generator):
    """q = 0 in every block (weights set by hand): every attention row is 1/N, N = 5
    tokens; rollout over two blocks: ((U + I) / 2)^2 = (3U + I) / 4, so the cls row
    is 3 / (4N) on every spatial token."""
    model = tiny_vit()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:192].zero_()
            block.attn.qkv.bias[:192].zero_()
    images = torch.randn(2, 3, 32, 32, generator=generator)
    maps = batch_maps(build_explainers(model, ["attention", "rollout"]), images, ["a", "b"])
    torch.testing.assert_close(maps["attention"], torch.full((2, 32, 32), 1 / 5))
    torch.testing.assert_close(maps["rollout"], torch.full((2, 32, 32), 3 / 20))


def _leaf_gradients(model, images, target):
    """Independent gradients: one block at a time, its attention probabilities
    replaced by a leaf (the other blocks' stay in the graph, so the gradient is the
    total derivative, paths through later attention included)."""
    probs, grads = [], []
    for chosen in model.blocks:
        leaves = []

        def swap(module, args, out):
            leaves.append(out.detach().clone().requires_grad_(True))
            return leaves[-1]

        chosen.attn.fused_attn = False
        handle = chosen.attn.attn_drop.register_forward_hook(swap)
        try:
            logits = model(images)
            grads.append(torch.autograd.grad(logits[torch.arange(len(images)), target].sum(), leaves)[0])
        finally:
            handle.remove()
            chosen.attn.fused_attn = True
        probs.append(leaves[0].detach())
    return probs, grads


def test_the_recorded_attention_and_its_gradients_are_autograds(generator):
    """In float64, so that the fused and the unfused attention agree to round-off
    (in float32 their gradients differ by ~1e-3 relative on small elements)."""
    model = tiny_vit().double()
    images = torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64)
    record = attention_pass(model, images, gradients="all")
    leaves, grads = _leaf_gradients(model, images, record.targets)
    for got, expected in zip(record.probs, leaves):
        torch.testing.assert_close(got, expected)
    for got, expected in zip(record.grads, grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    last = attention_pass(model, images, gradients="last")
    assert last.grads[0] is None, "the backward stops at the last block"
    torch.testing.assert_close(last.grads[1], grads[1], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="gradients must be one of"):
        attention_pass(model, images, gradients=True)
    assert all(block.attn.fused_attn for block in model.blocks), "the fused path is restored"
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def _packed_output(probs, v, table):
    """O = P V, sample by sample: packed probabilities [L, h, Nk] -> [L, h, d]."""
    offsets = table.offsets.tolist()
    return torch.cat([torch.einsum("lhn,hnd->lhd", probs[offsets[b]:offsets[b + 1]], v[b])
                      for b in range(len(offsets) - 1)])


def test_dge_attention_capture_equals_the_reference_op(generator):
    """The recorded probabilities are what the compiled varlen op computes inside;
    dO V^T is autograd's gradient of P."""
    indices = torch.randint(0, 2, (2, 3, 2), generator=generator)
    table = ops.route_to_patches(indices, (2, 1), 2, 1)
    q = torch.randn(table.total, 3, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 3, table.tokens, 8, generator=generator, dtype=torch.float64)
    v = torch.randn_like(k)
    probs = attention_probabilities(q, k, table)
    out = _packed_output(probs, v, table)
    torch.testing.assert_close(out, ops.reference.varlen_attention(q, k, v, table.offsets, 8 ** -0.5))
    torch.testing.assert_close(out, ops.varlen_attention(q, k, v, table))
    leaf = probs.clone().requires_grad_(True)
    grad_out = torch.randn_like(out)
    expected, = torch.autograd.grad((_packed_output(leaf, v, table) * grad_out).sum(), leaf)
    torch.testing.assert_close(packed_products(grad_out, v, table), expected)


def _token_level(record):
    """The record with every packed block expanded to token rows [B, h, N, Nk]."""
    def expand(values, block):
        return values if values is None else record.at_tokens(values, block).permute(0, 2, 1, 3)
    probs = [expand(p, b) for b, p in enumerate(record.probs)]
    grads = None if record.grads is None else [expand(g, b) for b, g in enumerate(record.grads)]
    return AttentionRecord(probs, grads, record.logits, record.targets)


def test_packed_records_act_as_their_token_level_matrices(generator):
    """Each token takes its covering query's row; row x matrix, cls rows and the
    four attention explainers equal those of the expanded token-level record."""
    model = from_dense(tiny_vit(img_size=64), phi=(1, 2)).eval()
    randomise_routers(model, generator, std=0.5)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    record = attention_pass(model, images, gradients="all")
    table = record.tables[0]
    assert table is not None and record.probs[0].shape == (table.total, 3, 17)
    tokens = _token_level(record)
    covering, _ = ops.reference.token_rows(table)
    for b in range(2):
        for t in range(17):
            assert torch.equal(tokens.probs[0][b, :, t], record.probs[0][covering[b, t]])
    row = torch.rand(2, 17, generator=generator, dtype=torch.float64)
    matrix = torch.rand(table.total, 17, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(record.times(row, matrix, 0), (row[:, None] @ matrix[covering])[:, 0])
    torch.testing.assert_close(record.cls_rows(record.probs[0], 0), tokens.probs[0][:, :, 0])
    for explainer in (RawAttention(model), Rollout(model), AttentionGradCAM(model), Relevance(model)):
        torch.testing.assert_close(explainer.map_from(record, images), explainer.map_from(tokens, images),
                                   rtol=1e-6, atol=1e-9)


def test_dge_attention_gradients_are_autograds_on_explicit_probabilities(generator):
    """Each block in turn computes O = P V from a leaf P: autograd's gradient of
    that leaf, divided by each query's area (its tokens' share), is what
    attention_pass records."""
    model = from_dense(tiny_vit(img_size=64), phi=(1, 2)).eval().double()
    randomise_routers(model, generator, std=0.5)
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    record = attention_pass(model, images, gradients="all")
    for index, chosen in enumerate(model.blocks):
        leaves = []

        def explicit(q, k, v, table):
            leaves.append((attention_probabilities(q, k, table).detach().requires_grad_(True), table))
            return _packed_output(leaves[-1][0], v, table).reshape(len(q), -1)

        chosen.attn.attend = explicit
        try:
            logits = model(images)
            grad, = torch.autograd.grad(logits[torch.arange(2), record.targets].sum(), leaves[0][0])
        finally:
            del chosen.attn.attend
        _, area = ops.reference.token_rows(leaves[0][1])
        torch.testing.assert_close(record.grads[index], grad / area.double().view(-1, 1, 1))


def test_a_dge_model_computes_the_same_with_the_attention_recorded(generator):
    model = from_dense(tiny_vit(img_size=64), phi=(1, 2)).eval()
    images = torch.randn(2, 3, 64, 64, generator=generator)
    with force_gates(model, mixed_routing):     # no block uniform: every one packs its queries
        with torch.no_grad():
            plain = model(images)
            with recording(model) as recorder:
                recorded = model(images)
        torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)
        assert len(recorder.blocks) == 2 and recorder.blocks[0].table is not None, "packed queries with their table"
        record = attention_pass(model, images, gradients="all")
        assert all(torch.isfinite(g).all() for g in record.grads)
        assert all(a.capture is None for a in (b.attn for b in model.blocks))
        maps = batch_maps(build_explainers(model, ["attention", "rollout", "attention-gradcam", "relevance"]),
                          images, ["a", "b"])
    assert all(m.shape == (2, 64, 64) and torch.isfinite(m).all() for m in maps.values())


def test_attention_explainers_on_pvt_where_defined(generator):
    model = small_pvt(phi=(1, 2), depths=(1, 1, 1, 2), dtype=torch.float32).eval()
    randomise_routers(model, generator)
    images = torch.randn(2, 3, 128, 128, generator=generator)
    maps = batch_maps(build_explainers(model, ["attention", "attention-gradcam"]), images, ["a", "b"])
    assert all(m.shape == (2, 128, 128) and torch.isfinite(m).all() for m in maps.values())
    for method in ("rollout", "relevance"):
        with pytest.raises(ValueError, match=rf"{method} multiplies token-to-token attention across blocks; "
                                             r"PVT's stages 1-3 attend to spatially reduced keys"):
            build_explainers(model, [method])


CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam-elementwise", "eigencam",
        "eigengradcam", "scorecam", "ablationcam"]


def test_dpvt_refuses_every_attention_explainer_and_gives_gating_maps(generator):
    model = small_dpvt(phi=(1, 2), depths=(1, 1, 1, 2), dtype=torch.float32).eval()
    for method in ("attention", "attention-gradcam", "rollout", "relevance"):
        with pytest.raises(ValueError, match=rf"{method} reads attention probabilities over tokens; DPVT's queries "
                                             r"attend to a few bilinearly sampled points per head"):
            build_explainers(model, [method])
    randomise_routers(model, generator)
    images = torch.randn(2, 3, 128, 128, generator=generator)
    maps = batch_maps(build_explainers(model, ["gating:all", "gating-margin:all", "random"]), images, ["a", "b"])
    gating = [name for name in maps if name.startswith("layer")]
    assert gating == [f"layer{i}" for i in range(1, 6)] + [f"layer{i}-margin" for i in range(1, 6)], \
        "one map per block (depths 1, 1, 1, 2), for both scores"
    assert all(m.shape == (2, 128, 128) and torch.isfinite(m).all() for m in maps.values())
    assert len({float(maps[name].std()) for name in gating}) > 1, "the blocks' routers differ"


@pytest.mark.parametrize("family", ["dense", "dge", "pvt", "dpvt"])
def test_the_pytorch_grad_cam_family(family, generator):
    if family in ("pvt", "dpvt"):
        build = small_pvt if family == "pvt" else small_dpvt
        model = build(phi=(1, 2), depths=(1, 1, 1, 2), dtype=torch.float32).eval()
        randomise_routers(model, generator)
        images = torch.randn(2, 3, 128, 128, generator=generator)
    else:
        model = tiny_vit(img_size=64, embed_dim=24, num_heads=2)
        if family == "dge":
            model = from_dense(model, phi=(1, 2)).eval()
            randomise_routers(model, generator, std=0.5)
        images = torch.randn(2, 3, 64, 64, generator=generator)
    explainers = build_explainers(model, CAMS)
    maps = batch_maps(explainers, images, ["a", "b"])
    assert sorted(maps) == sorted(CAMS)
    for name, m in maps.items():
        assert m.shape == (2, *images.shape[-2:]) and torch.isfinite(m).all(), name
        assert m.min() >= 0 and m.max() <= 1 + 1e-6, name
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    for e in explainers:     # one shared pass gives each method's own map
        if e.uses_gradients:
            torch.testing.assert_close(maps[e.method], e(images)[e.method], rtol=0, atol=1e-6)
    labels = torch.tensor([1, 3])
    assert torch.equal(CAMMaps(model, "gradcam")(images, labels=labels)["gradcam"],
                       CAMMaps(model, "gradcam")(images, labels=labels)["gradcam"])


def test_ablationcam_runs_only_the_tail_and_gives_pytorch_grad_cams_map(generator):
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    model = tiny_vit(img_size=64, embed_dim=24, num_heads=2, depth=3)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    with counting_calls(model.blocks[0].attn) as calls:
        ours = CAMMaps(model, "ablationcam")(images)["ablationcam"]
    # pytorch-grad-cam's two full passes (activations, original scores); none per ablation batch
    assert len(calls) == 2, "the blocks before the target run for the activations only"
    reshape = token_grid(model)
    whole = AblationCAM(model=model, target_layers=[model.blocks[-2]], reshape_transform=reshape,
                        ablation_layer=AblationLayerVit())
    with torch.no_grad():
        expected = whole(input_tensor=images, targets=None)
    torch.testing.assert_close(ours, torch.from_numpy(expected), rtol=0, atol=1e-5)


def test_the_standard_recipe_on_a_dge_model_gets_a_clear_message(generator):
    from pytorch_grad_cam import GradCAM

    model = from_dense(tiny_vit(img_size=64), phi=(1, 2)).eval()
    cam = GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                  reshape_transform=token_grid(model))
    with pytest.raises(ValueError, match=r"packed queries \[L, C\]; target a block output such as "
                                         r"model.blocks\[-2\]"), force_gates(model, mixed_routing):
        cam(input_tensor=torch.randn(1, 3, 64, 64, generator=generator), targets=None)
    cam.activations_and_grads.release()


def test_the_registry_knows_every_explainer_without_importing_it():
    names = set(registry())
    assert {"random", "gating", "gating-margin", "gating-density", "attention", "rollout", "attention-gradcam",
            "relevance", *CAMS} <= names
    assert registry()["gating"].takes_layers and not registry()["rollout"].takes_layers
    assert "gating[:L1,L2,...|:all]" in method_help() and "scorecam" in method_help()
    assert parse_method(" RollOut ") == ("rollout", None)
    assert f"layer {RECOMMENDED_LAYER} of 12" in registry()["gating"].help
    assert recommended_layer(12) == RECOMMENDED_LAYER and recommended_layer(4) == round(RECOMMENDED_LAYER / 3)
    assert parse_method("gating:all") == ("gating", ["all"]) and parse_method("gating:8,4") == ("gating", [8, 4])
    assert merge_methods(["gating:8", "random", "gating", "gating:4", "gating-margin:all"]) == \
        {"gating": [4, 8, "default"], "random": None, "gating-margin": ["all"]}
    assert merge_methods(["gating", "gating"]) == {"gating": None}
    assert resolve_layers(None, 12, [9]) == (9,) and resolve_layers("all", 3, [2]) == (1, 2, 3)
    assert resolve_layers([4, "default", "all"], 5, [2]) == (1, 2, 3, 4, 5) == resolve_layers(["all"], 5, [])
    with pytest.raises(ValueError, match=r"layers must be comma-separated integers or 'all'"):
        parse_method("gating:eight")
    with pytest.raises(ValueError, match=r"method 'rollout:3' takes no layers"):
        parse_method("rollout:3")


def test_one_pass_serves_every_attention_explainer_and_the_gating_maps(generator):
    model = from_dense(tiny_vit(img_size=64), phi=(1, 2)).eval()
    randomise_routers(model, generator, std=0.5)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    explainers = build_explainers(model, ["attention", "rollout", "relevance", "attention-gradcam", "gating"])
    with counting_calls(model) as forwards:
        shared = batch_maps(explainers, images, ["a", "b"])
    assert len(forwards) == 1
    alone = {name: m for e in explainers for name, m in e(images, ["a", "b"]).items()}
    assert sorted(shared) == sorted(alone)
    for name in alone:
        torch.testing.assert_close(shared[name], alone[name].cpu(), rtol=1e-5, atol=1e-7)
