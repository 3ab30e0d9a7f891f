"""Text-encoder layouts that only the benchmarks compare: the library's learner with fit's shortcuts off.

``clip-smot fit`` always shares the prefix (SOS and a unified context at class position end)
and always packs each prompt up to its own EOT (docs/prompt.md). To measure what each of these
shortcuts saves, ``LayoutLearner`` can turn them off:

* ``share_prefix=False``: no positions are shared; every prompt is encoded from position 0, as
  with a class-specific context or the class name in front;
* ``pack=False``: the per-token work (LayerNorms, projections, MLPs) runs on all K x S positions
  of the truncated layout, each prompt's positions after its own EOT included. It goes through
  the packed code with an index of every position (``arange(K*S)``), so its layers still gather
  and scatter by that index, copies that an unpacked encoder would not make: what ``fit_step.py``
  reports packing saves is somewhat more than against a plain unpacked encoder.

Both are exact (the features and the context's gradient are open_clip's), and with both on it is
the library's ``PromptLearner``.
"""

from __future__ import annotations

import torch

from clip_smot.clip.prompt import PromptLearner

__all__ = ["LayoutLearner"]


class LayoutLearner(PromptLearner):
    """A :class:`~clip_smot.clip.prompt.PromptLearner` whose shared prefix and packing can be off.

    Args:
        *args: ``PromptLearner``'s arguments (clip, classnames, n_ctx, ...).
        share_prefix: encode the positions shared by every prompt once (PromptLearner's layout);
            False: encode every prompt from position 0 (``prefix_len`` 0).
        pack: do the per-token work for each prompt's positions up to its own EOT only
            (PromptLearner's layout); False: for all positions up to the longest prompt's EOT.
        **options: ``PromptLearner``'s keyword arguments (precision, attention, residual).
    """

    def __init__(self, *args, share_prefix: bool = True, pack: bool = True, **options):
        super().__init__(*args, **options)
        if not share_prefix:
            self._lay_out(0)
        if not pack:  # every position of the [K, S] layout after the prefix
            K, S = len(self.classnames), self.seq_len - self.prefix_len
            self.packed_index = torch.arange(K * S, device=self.eot.device)  # [K*S]
