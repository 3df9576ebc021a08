"""The contract every explainer meets, and how explainers share passes.

An explainer is made from a model by its module's ``build(model, requests, seed)``
(the module also declares its method names in ``METHODS``, see
``dge_explain.methods``) and answers:

* ``names()``: the names of the maps it makes (e.g. ``["layer4", "layer8"]``);
* ``describe()``: ``{name: settings}``, recorded by a run so that a resumed run
  can refuse other settings;
* ``class_specific``: whether its maps depend on the explained class (``labels``);
* ``explainer(images, ids, labels=None) -> {name: maps [B, H, W]}`` at the input
  resolution, where ``ids`` are the images' identities (seeded maps depend on
  them, never on batching) and ``labels`` the classes to explain (None: the
  predicted ones).

Sharing passes, without ``batch_maps`` knowing any concrete class:

* explainers with the same ``shared_pass`` key are computed together by
  ``type(first).compute_together(group, images, labels)`` (one forward, and one
  backward where a member needs gradients);
* an explainer with ``rides_along`` reads its maps from whatever forward pass runs
  while its ``capturing()`` context is open (``maps_from(captured, size)``), so it
  costs nothing when another explainer runs a pass anyway.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class Explainer:
    class_specific: bool = False
    shared_pass: str | None = None
    rides_along: bool = False

    def names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must name its maps")

    def describe(self) -> dict[str, dict]:
        raise NotImplementedError(f"{type(self).__name__} must describe its settings")

    def __call__(self, images: torch.Tensor, ids, labels=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must compute its maps")

    @classmethod
    def compute_together(cls, explainers: list["Explainer"], images: torch.Tensor,
                         labels=None) -> dict[str, torch.Tensor]:
        """The maps of every explainer of one ``shared_pass`` group from one pass."""
        raise NotImplementedError(f"{cls.__name__} declares shared_pass={cls.shared_pass!r} "
                                  "but does not compute its group together")

    @contextlib.contextmanager
    def capturing(self) -> Iterator[object]:
        """For riders: records what ``maps_from`` needs during any forward inside."""
        raise NotImplementedError(f"{type(self).__name__} does not ride along")
        yield

    def maps_from(self, captured, size) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not ride along")


def batch_maps(explainers: list[Explainer], images: torch.Tensor, ids, labels=None) -> dict[str, torch.Tensor]:
    """Every explainer's maps of one batch, on the CPU.  Each ``shared_pass`` group
    runs one pass; riders record during the first of these passes (eval mode, the
    same logits), or else run on their own; every other explainer is called."""
    riders = [e for e in explainers if e.rides_along]
    groups: dict[str, list[Explainer]] = {}
    for explainer in explainers:
        if explainer.shared_pass is not None:
            groups.setdefault(explainer.shared_pass, []).append(explainer)
    maps: dict[str, torch.Tensor] = {}
    captured = None
    for group in groups.values():
        with contextlib.ExitStack() as stack:
            recording = [stack.enter_context(r.capturing()) for r in riders] if captured is None else None
            maps.update(type(group[0]).compute_together(group, images, labels))
        captured = captured if captured is not None else recording
    if captured:
        for rider, recorded in zip(riders, captured):
            maps.update(rider.maps_from(recorded, images.shape[-2:]))
    served = {id(e) for group in groups.values() for e in group}
    if captured:
        served |= {id(e) for e in riders}
    for explainer in explainers:
        if id(explainer) not in served:
            maps.update(explainer(images, ids, labels))
    return {name: m.detach().cpu() for name, m in maps.items()}
