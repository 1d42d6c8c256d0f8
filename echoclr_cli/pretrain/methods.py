"""The pretraining methods: the one place that says what SimCLR, MI-SimCLR and EchoCLR are.

Each method is one ``Method`` entry in ``METHODS``, registered once by name; the config
(``pretrain.method`` and its published epochs), the pair dataset, the pretraining task, the
sweep, the demo and the recipe look it up here. A new method is one entry (plus its loss in
``pretrain/losses.py`` when it adds a term).

- pairing ``clip``: one clip of one video, shown twice; the two views differ only by their
  augmentation (SimCLR).
- pairing ``study``: two clips of two different videos of one study (``pretrain.pair_within``
  narrows it to one view of the study; a study or view with one video pairs it with itself).
- reorder: each view's frames are shuffled and a reorder head predicts the permutation; the
  frame-order loss is added to the NT-Xent (EchoCLR).

Standard library only: config validation (the lowest layer) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    name: str  # the value of pretrain.method and the sweep's init name
    pairing: Literal["clip", "study"]  # what a positive pair is (module docstring)
    reorder: bool  # frames permuted + reorder head + frame-order loss
    published_epochs: int  # the paper's epochs (pretrain.epochs: null = this)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The loss is the weighted sum of these terms (``pretrain.<term>_weight``)."""
        return ("nt_xent", "reorder") if self.reorder else ("nt_xent",)


# In the paper's order (the demo pretrains them in this order, the sweep tables list them so).
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("simclr", pairing="clip", reorder=False, published_epochs=520),
        Method("mi-simclr", pairing="study", reorder=False, published_epochs=300),
        Method("echoclr", pairing="study", reorder=True, published_epochs=300),
    )
}
METHOD_NAMES = tuple(METHODS)
DEFAULT_METHOD = "echoclr"  # the paper's method (pretrain.method's default)
