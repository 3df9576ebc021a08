"""The token-reduction peers (dge_explain/models/peers): ToMe and EViT patched into
a timm ViT equal the dense model when they reduce nothing, equal a direct,
token-by-token implementation of each paper's rule when they do, count MACs as a
FLOP counter does, and draw their compute-allocation maps from the tokens the
forward actually kept."""
import math

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dge_explain.complexity import dense_macs
from dge_explain.explainers import build_explainers
from dge_explain.models.peers import (EViT, ToMe, apply_evit, apply_tome, bipartite_merge, evit_for_ratio,
                                      fuse_inattentive, macs_ratio, paper_layers, reduced, reduced_macs,
                                      remove_token_reduction, token_counts, tome_for_ratio)

from helpers import small_pvt, small_vit

SIDE = 64


def tiny_vit(depth=3, distilled=False, **kwargs):
    kind = VisionTransformerDistilled if distilled else VisionTransformer
    return kind(img_size=SIDE, patch_size=8, embed_dim=48, depth=depth, num_heads=3, qkv_bias=True,
                num_classes=10, **kwargs).double().eval()


def images(generator, batch=2, side=SIDE):
    return torch.randn(batch, 3, side, side, generator=generator, dtype=torch.float64)


# --- a direct implementation of each paper's rule, one image, token by token ---------------------------

def _embed(model, image):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))
    return [t for t in x[0]]


def _attention(block, tokens, sizes):
    """Proportional attention written out: softmax(q k^T / sqrt(d) + log size_j) v per head;
    also the keys and the attention probabilities [h, N, N]."""
    attn = block.attn
    x = block.norm1(torch.stack(tokens))
    q, k, v = attn.qkv(x).reshape(len(tokens), 3, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)
    logits = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5 + torch.tensor(sizes, dtype=x.dtype).log()
    probs = logits.softmax(-1)
    out = attn.proj((probs @ v).transpose(0, 1).reshape(len(tokens), -1))
    return [t + o for t, o in zip(tokens, out)], k, probs


def _mlp(block, tokens):
    return [t + block.mlp(block.norm2(t)) for t in tokens]


def paper_tome_merge(tokens, keys, sizes, r, prefix):
    """ToMe's rule: A = even positions, B = odd (prefix excluded); each A joins its most
    cosine-similar B; the r A tokens with the most similar partners merge, size-weighted;
    out: prefix, the other A tokens in order, the B tokens."""
    a = [i for i in range(prefix, len(tokens)) if i % 2 == 0]
    b = [i for i in range(prefix, len(tokens)) if i % 2 == 1]
    cos = lambda i, j: float(keys[i] @ keys[j] / (keys[i].norm() * keys[j].norm()))
    partner = {i: max(b, key=lambda j: cos(i, j)) for i in a}
    merged = sorted(a, key=lambda i: -cos(i, partner[i]))[:r]
    out_tokens = tokens[:prefix] + [tokens[i] for i in a if i not in merged]
    out_sizes = sizes[:prefix] + [sizes[i] for i in a if i not in merged]
    for j in b:
        group = [j] + [i for i in merged if partner[i] == j]
        total = sum(sizes[i] for i in group)
        out_tokens.append(sum(tokens[i] * sizes[i] for i in group) / total)
        out_sizes.append(total)
    pairs = sorted((i, partner[i]) for i in merged)
    return out_tokens, out_sizes, pairs


def paper_tome_logits(model, image, r):
    tokens, sizes = _embed(model, image), None
    sizes = [1.0] * len(tokens)
    for block in model.blocks:
        tokens, keys, _ = _attention(block, tokens, sizes)
        tokens, sizes, _ = paper_tome_merge(tokens, keys.mean(0), sizes, r, model.num_prefix_tokens)
        tokens = _mlp(block, tokens)
    return model.forward_head(model.norm(torch.stack(tokens)[None]))[0]


def paper_evit_logits(model, image, keep_rate, layers):
    tokens, prefix = _embed(model, image), model.num_prefix_tokens
    for index, block in enumerate(model.blocks):
        tokens, _, probs = _attention(block, tokens, [1.0] * len(tokens))
        if index + 1 in layers:
            cls = probs[:, 0].mean(0)                                  # the class token's row, head mean
            candidates = list(range(prefix, len(tokens)))
            k = math.ceil(round(keep_rate * len(candidates), 9))
            top = sorted(sorted(candidates, key=lambda i: -float(cls[i]))[:k])
            rest = [i for i in candidates if i not in top]
            if rest:
                fused = sum(tokens[i] * cls[i] for i in rest) / sum(cls[i] for i in rest)
                tokens = tokens[:prefix] + [tokens[i] for i in top] + [fused]
        tokens = _mlp(block, tokens)
    return model.forward_head(model.norm(torch.stack(tokens)[None]))[0]


# --- no reduction: the dense model --------------------------------------------------------------------

@pytest.mark.parametrize("distilled", [False, True])
def test_tome_r0_and_evit_keep_rate_1_equal_the_dense_model(distilled, generator):
    model = tiny_vit(distilled=distilled)
    x = images(generator)
    with torch.no_grad():
        dense = model(x)
        tome = apply_tome(model, 0, copy=True)(x)
        evit = apply_evit(model, 1.0, layers=(1, 2, 3), copy=True)(x)
    assert (tome - dense).abs().max() < 1e-12
    assert (evit - dense).abs().max() < 1e-12
    assert all(type(b) is Block for b in model.blocks), "a copy must leave the model dense"


def test_a_patched_copy_shares_the_weights_and_can_be_undone(generator):
    model = tiny_vit()
    copy = apply_tome(model, 4, copy=True)
    assert all(p is q for p, q in zip(model.parameters(), copy.parameters()))
    assert copy.state_dict().keys() == model.state_dict().keys()
    x = images(generator)
    with torch.no_grad():
        dense = model(x)
        assert (copy(x) - dense).abs().max() > 1e-6
        remove_token_reduction(copy)
        assert (copy(x) - dense).abs().max() == 0
        with reduced(model, ToMe(3, 1, 4)):
            reduced_out = model(x)
        assert (model(x) - dense).abs().max() == 0 and (reduced_out - dense).abs().max() > 1e-6


# --- ToMe: the paper's rule ---------------------------------------------------------------------------

def test_tome_merges_the_pairs_of_a_hand_case():
    # class token, then positions 1..6: A = {2, 4, 6}, B = {1, 3, 5}; keys in 2-D, values 1-D
    keys = torch.tensor([[9.0, 9.0], [1, 0], [1, 0.1], [0, 1], [0.2, 1], [-1, 0], [-1, 0.5]], dtype=torch.float64)
    values = torch.tensor([[100.0], [1], [2], [3], [4], [5], [6]], dtype=torch.float64)
    sizes = torch.tensor([[1.0, 1, 3, 2, 1, 1, 1]], dtype=torch.float64)
    x, size, moved = bipartite_merge(values[None], keys[None], sizes, r=2, prefix=1)
    # 2 -> 1 (cos 0.995) and 4 -> 3 (cos 0.981) merge; 6 -> 5 (cos 0.894) is third and stays
    assert x[0, :, 0].tolist() == pytest.approx([100, 6, (1 * 1 + 2 * 3) / 4, (3 * 2 + 4 * 1) / 3, 5])
    assert size[0].tolist() == [1, 1, 4, 3, 1]
    assert moved[0].tolist() == [0, 2, 2, 3, 3, 4, 1]
    tokens, out_sizes, pairs = paper_tome_merge(list(values), keys, sizes[0].tolist(), 2, 1)
    assert pairs == [(2, 1), (4, 3)] and out_sizes == [1, 1, 4, 3, 1]
    assert torch.stack(tokens)[:, 0].tolist() == pytest.approx(x[0, :, 0].tolist())


def test_tome_never_merges_the_prefix_tokens():
    # the class token's key equals token 1's and the distillation token's equals token 3's
    keys = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 0.01], [0, 1.02], [0.03, 1]], dtype=torch.float64)
    values = torch.arange(7, dtype=torch.float64)[None, :, None]
    x, size, _ = bipartite_merge(values, keys[None], None, r=2, prefix=2)
    assert x[0, :2, 0].tolist() == [0, 1] and size[0, :2].tolist() == [1, 1]
    assert size.sum() == 7 and x.shape[1] == 5


@pytest.mark.parametrize("distilled,r", [(False, 5), (False, 40), (True, 7)])
def test_tome_model_equals_the_papers_rule_token_by_token(distilled, r, generator):
    """Merging, size-weighted averages, sizes carried over blocks and proportional
    attention (log size on every key's logit): the patched model's logits against
    the rule written out per token (r = 40 asks more than a block can merge)."""
    model = tiny_vit(distilled=distilled)
    x = images(generator)
    with torch.no_grad():
        patched = apply_tome(model, r, copy=True)(x)
        expected = torch.stack([paper_tome_logits(model, image, r) for image in x])
    assert (patched - expected).abs().max() < 1e-10


def test_proportional_attention_equals_attention_over_the_merged_copies(generator):
    """A token of size s attended with log s added to its logit draws the attention of
    s identical tokens: the block's output equals the dense block's on the copies."""
    model = tiny_vit(depth=1)
    block = model.blocks[0]
    tokens = torch.randn(1, 4, 48, generator=generator, dtype=torch.float64)
    copies = tokens[:, [0, 1, 2, 2, 2, 3, 3]]
    reduction = ToMe(1, 1, 0)
    reduction.size = torch.tensor([[1.0, 1, 3, 2]], dtype=torch.float64)
    with torch.no_grad():
        merged = block.attn(block.norm1(tokens), attn_mask=reduction.attention_bias())
        dense = block.attn(block.norm1(copies))
    assert (merged - dense[:, [0, 1, 2, 5]]).abs().max() < 1e-12


# --- EViT: the paper's rule ---------------------------------------------------------------------------

def test_evit_keeps_exactly_the_top_k_by_class_attention():
    values = torch.tensor([[0.0], [10], [20], [30], [40], [50]], dtype=torch.float64)[None]
    cls = torch.tensor([[0.0, 0.1, 0.4, 0.05, 0.3, 0.15]], dtype=torch.float64)
    x, moved = fuse_inattentive(values, cls, keep=2, prefix=1)
    # tokens 2 (0.4) and 4 (0.3) kept in order; 1, 3, 5 fused by their attention
    assert x[0, :, 0].tolist() == pytest.approx([0, 20, 40, (0.1 * 10 + 0.05 * 30 + 0.15 * 50) / 0.3])
    assert moved[0].tolist() == [0, 3, 1, 3, 2, 3]
    same, moved = fuse_inattentive(values, cls, keep=5, prefix=1)
    assert same is values and moved is None


@pytest.mark.parametrize("distilled,keep_rate,layers", [(False, 0.5, (1, 3)), (False, 0.1, (2,)),
                                                       (True, 0.7, (1, 2, 3))])
def test_evit_model_equals_the_papers_rule_token_by_token(distilled, keep_rate, layers, generator):
    """The class token's row from the full attention matrix (the patch computes that row
    alone), its top-k kept, the rest fused by their attention, at each chosen block."""
    model = tiny_vit(distilled=distilled)
    x = images(generator)
    with torch.no_grad():
        patched = apply_evit(model, keep_rate, layers, copy=True)(x)
        expected = torch.stack([paper_evit_logits(model, image, keep_rate, layers) for image in x])
    assert (patched - expected).abs().max() < 1e-10


def test_evit_takes_the_papers_blocks_at_the_models_depth():
    assert paper_layers(12) == (4, 7, 10)
    assert paper_layers(24) == (8, 14, 20)
    assert paper_layers(3) == (1, 2)
    assert EViT(12, 1, 0.7).layers == (4, 7, 10)
    assert [n for _, n in token_counts(tiny_vit(depth=12), (SIDE, SIDE), EViT(12, 1, 0.7))] == \
        [65] * 3 + [1 + 45 + 1] * 3 + [1 + 33 + 1] * 3 + [1 + 24 + 1] * 3


# --- MACs ----------------------------------------------------------------------------------------------

def _counted_flops(model, x):
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("method,setting", [("tome", 0), ("tome", 6), ("tome", 40), ("tome", [3, 9, 0, 20]),
                                            ("evit", (1.0, None)), ("evit", (0.5, (1, 3))), ("evit", (0.1, (2, 4)))])
def test_macs_equal_a_flop_counter(method, setting, generator):
    model = tiny_vit(depth=4, dynamic_img_size=True)
    patched = apply_tome(model, setting, copy=True) if method == "tome" else \
        apply_evit(model, *setting, copy=True)
    for size in [(SIDE, SIDE), (48, 80)]:
        x = torch.randn(1, 3, *size, generator=generator, dtype=torch.float64)
        assert _counted_flops(patched, x) == 2 * reduced_macs(patched, size, terms="matmul"), size
        assert reduced_macs(patched, size) > reduced_macs(patched, size, terms="matmul")
    assert reduced_macs(model, (SIDE, SIDE)) == dense_macs(model, (SIDE, SIDE))


@pytest.mark.parametrize("reduction", [ToMe(4, 1, 9), EViT(4, 1, 0.3, (1, 2, 4))])
def test_token_counts_are_the_tokens_each_block_sees(reduction, generator):
    model = tiny_vit(depth=4)
    seen = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for b in model.blocks]
    hooks += [b.mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for b in model.blocks]
    with torch.no_grad(), reduced(model, reduction):
        model(images(generator, batch=1))
    for hook in hooks:
        hook.remove()
    counts = token_counts(model, (SIDE, SIDE), reduction)
    assert sorted(seen) == sorted(n for pair in counts for n in pair)
    assert counts[0][0] == 65 and all(after == nxt for (_, after), (nxt, _) in zip(counts, counts[1:]))


def test_the_setting_for_a_macs_ratio_is_the_nearest():
    model = timm.create_model("deit_tiny_patch16_224")
    for target in (0.5, 0.6, 0.75):
        tome, ratio = tome_for_ratio(model, (224, 224), target)
        r = tome.r[0]
        assert ratio == macs_ratio(model, (224, 224), tome) and abs(ratio - target) < 0.02
        for neighbour in (r - 1, r + 1):
            assert abs(macs_ratio(model, (224, 224), ToMe(12, 1, neighbour)) - target) >= abs(ratio - target)
        evit, ratio = evit_for_ratio(model, (224, 224), target)
        assert evit.layers == (4, 7, 10) and abs(ratio - target) < 0.01
        for neighbour in (evit.keep_rate - 0.001, evit.keep_rate + 0.001):
            other = macs_ratio(model, (224, 224), EViT(12, 1, neighbour))
            assert abs(other - target) >= abs(ratio - target)
    assert tome_for_ratio(model, (224, 224), 0.01)[0].r[0] == 98, "out of reach: the most a block can merge"


# --- refusals ------------------------------------------------------------------------------------------

def test_models_that_are_not_plain_token_vits_are_refused():
    with pytest.raises(ValueError, match=r"DGEVisionTransformer: token reduction \(ToMe, EViT\) runs on plain "
                                         r"token ViTs only; it has DGE routers"):
        apply_tome(small_vit(), 4)
    with pytest.raises(ValueError, match="PyramidVisionTransformer: .* plain token ViTs only; it is a pvt model"):
        apply_evit(small_pvt(phi=None), 0.7)
    with pytest.raises(ValueError, match=r"pools its tokens by 'avg' \(class-token pooling needed\)"):
        apply_tome(tiny_vit(global_pool="avg"), 4)
    with pytest.raises(ValueError, match=r"EViT's keep rate must be in \(0, 1\], got 0"):
        apply_evit(tiny_vit(), 0)
    with pytest.raises(ValueError, match=r"EViT layers \[4\] out of range: the model has blocks 1..3"):
        apply_evit(tiny_vit(), 0.5, layers=(2, 4))
    with pytest.raises(ValueError, match=r"ToMe's r must be a count >= 0 or one per block \(3 blocks\)"):
        apply_tome(tiny_vit(), [1, 2])


# --- the compute-allocation maps -----------------------------------------------------------------------

def test_tome_size_maps_hold_each_token_size_times(generator):
    """At each layer a token of size s covers s patches: over the token grid, the sum
    of 1/size is the number of spatial tokens left, and patches are counted once."""
    model = tiny_vit(depth=3)
    explainer = build_explainers(model, ["tome-size"])[0]
    maps = explainer(images(generator), ["a", "b"])
    r = explainer.reduction((SIDE, SIDE)).r[0]
    assert abs(macs_ratio(model, (SIDE, SIDE), ToMe(3, 1, r)) - 0.6) <= min(
        abs(macs_ratio(model, (SIDE, SIDE), ToMe(3, 1, v)) - 0.6) for v in range(33))
    counts = token_counts(model, (SIDE, SIDE), ToMe(3, 1, r))
    for layer, (_, after) in enumerate(counts, 1):
        grid = maps[f"tome-size-layer{layer}"][:, ::8, ::8]                 # one pixel per patch
        assert ((1 / grid).sum(dim=(1, 2)).round() == after - 1).all(), layer
        assert (maps[f"tome-size-layer{layer}"] == grid.repeat_interleave(8, 1).repeat_interleave(8, 2)).all()
    assert all(type(b) is Block for b in model.blocks), "the model is dense again after the maps"


def test_evit_kept_maps_mark_the_kept_patches(generator):
    model = tiny_vit(depth=3)
    explainer = build_explainers(model, ["evit-kept:1,2,3"])[0]
    x = images(generator)
    maps = explainer(x, ["a", "b"])
    reduction = explainer.reduction((SIDE, SIDE))
    assert reduction.layers == (1, 2)
    keep = math.ceil(round(reduction.keep_rate * 64, 9))
    kept = {layer: maps[f"evit-kept-layer{layer}"][:, ::8, ::8].flatten(1) for layer in (1, 2, 3)}
    assert set(kept[1].unique().tolist()) == {0.0, 1.0} and (kept[1].sum(1) == keep).all()
    assert (kept[2] <= kept[1]).all() and (kept[3] == kept[2]).all()
    # the patches kept at block 1 are the top-k of the class token's attention in block 1
    captured = {}
    block = model.blocks[0]
    handle = block.attn.qkv.register_forward_hook(lambda m, a, out: captured.setdefault("qkv", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    q, k, _ = captured["qkv"].reshape(2, 65, 3, 3, 16).permute(2, 0, 3, 1, 4)
    cls = ((q[:, :, :1] @ k.transpose(-1, -2)) * 16 ** -0.5).softmax(-1)[:, :, 0].mean(1)[:, 1:]
    top = torch.zeros_like(kept[1]).scatter_(1, cls.topk(keep).indices, 1.0)
    assert (top == kept[1]).all()


def test_maps_refuse_layers_the_model_lacks():
    with pytest.raises(ValueError, match=r"tome-size: layers \[4\] out of range: the model has blocks 1..3"):
        build_explainers(tiny_vit(), ["tome-size:4"])


# --- the benchmark's machinery (timings themselves are not tested) ------------------------------------



def test_the_benchmark_records_every_variant_and_writes_its_report(tmp_path, generator):
    from PIL import Image

    from dge_explain.bench import peers
    from dge_explain.data import LabelledImageFolder, Preprocessing

    folder = tmp_path / "data" / "imagenet-sample"
    folder.mkdir(parents=True)
    for index in range(6):
        pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"n{index:08d}_thing.jpg")
    from dge_explain.models import from_dense

    dense = VisionTransformer(img_size=SIDE, patch_size=8, embed_dim=48, depth=4, num_heads=3, qkv_bias=True,
                              num_classes=10, dynamic_img_size=True).eval()
    result = peers.run(["tiny"], ratios=[0.6, 0.75], resolutions=[SIDE], batch_sizes=[2, 4], home=str(tmp_path),
                       report=lambda line: None, load=lambda name, home: (dense, from_dense(dense, phi=(1, 2)), True),
                       accuracy_resolution=SIDE, min_time=0, warmup=0, min_repeats=1)
    cases = result["cases"]
    labels = ["dense", "DGE (trained)", "DGE (forced) 0.6", "DGE (forced) 0.75", "ToMe 0.6", "EViT 0.6",
              "ToMe 0.75", "EViT 0.75"]
    assert [peers.label(c["method"], c["target"]) for c in cases] == labels * 2
    assert [c["batch"] for c in cases] == [2] * 8 + [4] * 8
    for case in cases:
        same = [c for c in cases if c["batch"] == case["batch"] and c["method"] == "dense"][0]
        assert case["latency_ratio"] == pytest.approx(case["ms"] / same["ms"])
        if case["method"] in ("tome", "evit"):
            choose = tome_for_ratio if case["method"] == "tome" else evit_for_ratio
            assert case["macs_ratio"] == pytest.approx(choose(dense, (SIDE, SIDE), case["target"])[1])
        if case["method"] == "dge-forced":      # measured over the dense MACs: the routers' cost on top
            assert case["dge_complexity_ratio"] == pytest.approx(case["target"], abs=0.1)
            assert case["macs_ratio"] > case["dge_complexity_ratio"]
    # three odd-half images: batch 2 is timed on photos, batch 4 on random inputs
    assert result["timing_inputs"] == {f"tiny {SIDE} 2": "imagenet-sample odd half", f"tiny {SIDE} 4": "randn"}
    accuracy = result["accuracy"]["tiny"]
    assert accuracy["images"] == 3 and accuracy["resolution"] == SIDE and list(accuracy["variants"]) == labels
    # the dense top-1 against the model's own predictions on the same held-out images
    data = LabelledImageFolder(f"{folder}:odd", Preprocessing.of(dense, input_size=SIDE).classification_transform())
    with torch.no_grad():
        hits = sum(int(dense(image[None]).argmax()) == label for image, label in data)
    assert accuracy["variants"]["dense"]["top1"] == hits / 3
    written = peers.write(result, tmp_path / "out" / "peers.json", "the command")
    assert [p.name for p in written] == ["peers.json", "peers.md", "peers.png", "peers.pdf"]
    text = (tmp_path / "out" / "peers.md").read_text()
    assert "`the command`" in text and "## At matched MACs ratios" in text
    header, rows = peers.matched(result)
    assert [r[:4] for r in rows] == [["tiny", str(SIDE), b, t] for b in ("2", "4") for t in ("0.6", "0.75")]
    assert all(r[7] in ("DGE (forced)", "ToMe", "EViT") for r in rows)


def test_bench_peers_refuses_what_it_does_not_time(capsys):
    from dge_explain.cli import main

    for extra, message in [(["--models", "pvt_small"], "--peers runs deit_tiny, deit_small; not pvt_small"),
                           (["--gates", "trained"], "--peers times forced and DeiT-Ti's trained gates itself")]:
        assert main(["bench", "--peers", *extra]) == 2
        assert f"dge-explain bench: error: {message}" in capsys.readouterr().err


def test_peer_maps_are_titled_scaled_and_rebuilt_from_a_runs_settings():
    from dge_explain.evaluation.report import method_title, ordered_names
    from dge_explain.explainers import methods_of_run
    from dge_explain.viz.ranges import MapScale, map_scale

    assert method_title("tome-size-layer3") == "ToMe token size (layer 3)"
    assert method_title("layer8-margin") == "Layer 8 (margin)"
    assert map_scale("evit-kept-layer4") == MapScale("kept", 1.0)
    assert map_scale("tome-size-layer2") == MapScale("patches", None)
    settings = {"maps": {"tome-size-layer3": {"method": "tome-size", "layer": 3},
                         "tome-size-layer1": {"method": "tome-size", "layer": 1},
                         "layer8": {"method": "gating", "layer": 8, "score": "fine"},
                         "random": {"method": "random"}}}
    assert methods_of_run(settings) == ["random", "gating:8", "tome-size:1,3"]
    assert ordered_names(["layer8", "tome-size-layer3", "tome-size-layer1", "random"]) == \
        ["random", "tome-size-layer1", "tome-size-layer3", "layer8"]
