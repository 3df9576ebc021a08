"""DynamicGrainedEncoder: router + compress + restore around any query-side
encoder.  A block hands it a function ``encode(queries, x, table)`` that runs the
block's attention and MLP on the queries, with keys and values from the full
input x; the DGE decides which queries exist.

* eval: argmax gates, sparse packed queries through the compiled ops; a batch
  whose regions all took one granularity skips the patch table: every region
  finest runs the plain dense block, every region split k x k (coarsest: k = 1)
  one dense pass over the grid average-pooled with the sub-patch step;
* train (default): hard Gumbel-softmax gates with straight-through gradients on
  the dense multi-granularity path, whose forward equals the sparse path's;
* train with ``sparse_train=True``: the argmax of the Gumbel gates routes a
  sparse path; the update is scaled by the (straight-through) chosen gate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dge_explain import ops
from dge_explain.ops.checks import require

from .router import DynamicRouter

Encode = Callable[[torch.Tensor, torch.Tensor, Optional[ops.PatchTable]], torch.Tensor]


def split_sizes_for(phi) -> tuple[tuple[int, ...], int]:
    """Candidate patch sizes Phi (in tokens, e.g. (1, 2)) -> (split sizes k = S/phi,
    finest first; region size S = max Phi)."""
    patch_sizes = sorted({int(p) for p in phi})
    require(len(patch_sizes) > 0 and patch_sizes[0] >= 1, lambda: f"phi must hold positive sizes, got {phi}")
    region_size = patch_sizes[-1]
    require(all(region_size % p == 0 for p in patch_sizes),
            lambda: f"every candidate granularity must divide the largest, got phi={tuple(phi)}")
    return tuple(region_size // p for p in patch_sizes), region_size


@dataclass
class Routing:
    """What one forward pass of a DGE chose: the option index per region
    [B, Hr, Wr], the token grid and extra tokens, and in training the hard gates
    [B, Hr, Wr, K] with their straight-through gradients (in eval they are the
    one-hot of `choice`, made when first asked for)."""
    choice: torch.Tensor
    grid: tuple[int, int]
    num_extra: int
    split_sizes: tuple[int, ...]
    soft_gates: Optional[torch.Tensor] = None
    region_size: Optional[int] = None       # None: the largest split size (S when the finest is 1 token)

    @property
    def gates(self) -> torch.Tensor:
        if self.soft_gates is None:
            self.soft_gates = F.one_hot(self.choice, len(self.split_sizes)).float()
        return self.soft_gates

    @property
    def tokens(self) -> int:
        return self.num_extra + self.grid[0] * self.grid[1]

    def queries(self) -> torch.Tensor:
        """Queries per sample [B] (float, differentiable through the gates)."""
        # k * k per region, fewer in regions cut by a ragged border
        rows = ops.region_rows(self.grid, self.region_size or max(self.split_sizes), self.split_sizes)
        return self.num_extra + (self.gates * rows.to(self.gates)).sum(dim=(1, 2, 3))


class DynamicGrainedEncoder(nn.Module):
    def __init__(self, dim: int, phi=(1, 2), init_gate: float = 0.95, sparse_train: bool = False):
        super().__init__()
        self.split_sizes, self.region_size = split_sizes_for(phi)
        # Kept in the state dict under the original implementation's name.
        self.register_buffer("splits", torch.tensor(self.split_sizes, dtype=torch.long))
        self.router = DynamicRouter(dim, len(self.split_sizes), self.region_size, init_gate)
        self.sparse_train = sparse_train
        self.routing: Optional[Routing] = None
        # Set by dge_explain.models.gating.force_gates: logits -> chosen indices.
        self.forced_choice: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        # The uniform-routing fast paths (eval mode); off: always the sparse path.
        self.fast_paths = True
        # Ragged borders: a token grid that is not a multiple of the region size runs,
        # its last regions cut short by the border (see ragged_borders); off: refused.
        self.ragged = False

    @property
    def phi(self) -> tuple[int, ...]:
        return tuple(self.region_size // k for k in self.split_sizes)

    def extra_repr(self) -> str:
        return f"phi={self.phi}, split_sizes={self.split_sizes}, sparse_train={self.sparse_train}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "splits"
        if key in state_dict and tuple(state_dict[key].tolist()) != self.split_sizes:
            error_msgs.append(f"{key} holds split sizes {tuple(state_dict[key].tolist())} but this "
                              f"model was built with {self.split_sizes} (phi={self.phi})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], encode: Encode,
                pooled_path: bool = True) -> torch.Tensor:
        """pooled_path=False keeps a uniformly coarse batch on the packed path (whose
        queries each carry a patch table row), e.g. while explainers read the
        attention of every query."""
        height, width = grid
        num_extra = x.shape[1] - height * width
        require(num_extra >= 0, lambda: f"x has {x.shape[1]} tokens, fewer than the {height}x{width} grid")
        pooled = self.router.pool(x, grid, num_extra, ragged=self.ragged)
        require(not self.training or self.sparse_train or (height % self.region_size == 0
                                                           and width % self.region_size == 0),
                lambda: f"token grid {height}x{width} is not divisible by region size {self.region_size}: "
                        "the multi-granularity training path needs whole regions (train at a multiple, "
                        "or with sparse_train=True)")
        logits = self.router(x, grid, num_extra, pooled=pooled)
        options = len(self.split_sizes)
        gates = None
        if self.forced_choice is not None:
            choice = self.forced_choice(logits)
            if self.training:  # straight-through, so that a forced pass still trains the router
                soft = logits.softmax(-1).to(x.dtype)
                gates = F.one_hot(choice, options).to(x.dtype) + soft - soft.detach()
        elif self.training:
            gates = F.gumbel_softmax(logits, tau=1.0, hard=True, dim=-1).to(x.dtype)
            choice = gates.argmax(-1)
        else:
            choice = logits.argmax(-1)

        if not self.training:
            out = self._eval(x, grid, num_extra, choice, pooled, encode, pooled_path)
        elif self.sparse_train:
            out = self._sparse(x, grid, choice, num_extra, encode, gate_rows=gates)
        else:
            out = self._multigrain(x, grid, num_extra, gates, encode)
        self.routing = Routing(choice, (height, width), num_extra, self.split_sizes, gates, self.region_size)
        return out

    def _eval(self, x, grid, num_extra, choice, pooled, encode, pooled_path):
        """The sparse path, or a fast path where every region of the batch took one option."""
        table = None
        if not self.fast_paths:
            option = None
        elif choice.device.type == "cpu":  # host memory: reading the gates costs nothing
            low, high = torch.aminmax(choice)
            option = int(low) if int(low) == int(high) else None
        else:
            # A look at device gates would wait for the device.  The routing table copies
            # the per-sample row counts to the host anyway (its one synchronisation), and
            # only all-finest (most rows) or all-coarsest (fewest) batches reach the
            # extremes, so the decision reads those counts and adds no wait.
            table = ops.route_to_patches(choice, self.split_sizes, self.region_size, num_extra, grid)
            option = self._extreme_option(table, grid, num_extra)
        # a pooled pass hands explainers queries without table rows; a dense one (step 1) does not
        if option is not None and (pooled_path or self.split_sizes[option] == self.region_size):
            return self._uniform(x, grid, num_extra, option, pooled, encode)
        if table is None:
            table = ops.route_to_patches(choice, self.split_sizes, self.region_size, num_extra, grid)
        return self._sparse(x, grid, choice, num_extra, encode, gate_rows=None, table=table)

    def _extreme_option(self, table, grid, num_extra) -> Optional[int]:
        """0 where every sample of the table has the finest option's row count, the
        last option where every sample has the coarsest's, else None."""
        lengths = table.lengths.tolist()
        for option in (0, len(self.split_sizes) - 1):
            rows = num_extra + ops.uniform_rows(grid, self.region_size, self.split_sizes[option])
            if all(length == rows for length in lengths):
                return option
        return None

    def _uniform(self, x, grid, num_extra, option, pooled, encode):
        """Every region split k x k: finest (k = S) is the plain dense block; otherwise
        one dense pass over the grid pooled with the sub-patch step S / k, its update
        upsampled back (compress = pooling, restore = nearest upsample)."""
        step = self.region_size // self.split_sizes[option]
        if step == 1:
            return encode(x, x, None)
        queries = ops.pooled_queries(x, grid, step, num_extra, pooled if step == self.region_size else None)
        return ops.pooled_restore(x, encode(queries, x, None), queries, grid, step, num_extra)

    def _sparse(self, x, grid, choice, num_extra, encode, gate_rows, table=None):
        if table is None:
            table = ops.route_to_patches(choice, self.split_sizes, self.region_size, num_extra, grid)
        comp = ops.compress(x, table)
        updated = encode(comp, x, table)
        if gate_rows is None:
            return ops.restore(x, updated, comp, table)
        # Sparse training: scale each row's update by its chosen gate (1.0 forward,
        # straight-through gradient to the chosen logit); extra tokens by 1.
        chosen = gate_rows.max(-1).values
        token_gate = chosen.repeat_interleave(self.region_size, 1).repeat_interleave(
            self.region_size, 2)[:, :grid[0], :grid[1]].flatten(1)
        token_gate = torch.cat([token_gate.new_ones(x.shape[0], num_extra), token_gate], 1)
        row_gate = ops.compress(token_gate.unsqueeze(-1), table)
        return ops.decompress((updated - comp) * row_gate, table, x)

    def _multigrain(self, x, grid, num_extra, gates, encode):
        queries = ops.multigrain_compress(x, self.split_sizes, self.region_size, num_extra, grid)
        updated = encode(queries, x, None)
        return ops.multigrain_restore(x, updated - queries, gates, self.split_sizes,
                                      self.region_size, num_extra, grid)


def ragged_borders(model: nn.Module, enabled: bool = True) -> None:
    """Let every DGE of `model` run token grids that are not multiples of its region
    size (the last row and column of regions cut short by the grid's border; a
    patch cut by it averages its own tokens), so that the model takes the inputs
    its dense original takes; a pyramid model (PVT, DPVT) then also pads only to
    its dense stride.  Grids that are multiples run exactly as before."""
    modules = [module for module in model.modules() if isinstance(module, DynamicGrainedEncoder)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no DynamicGrainedEncoder")
    for module in modules:
        module.ragged = enabled
