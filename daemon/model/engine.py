"""How one batch's task prompts become ``generate`` calls: the engine variants (issue 15).

``model.engine`` names one base and any extras joined by ``+``:

* ``tasks``: one ``generate`` per task over the whole batch of images, every
  task sharing the batch's vision features (the engine before issue 15);
* ``folded``: tasks that decode alike in one ``generate`` (rows = images x
  tasks, the features repeated, prompts right-padded under their attention
  mask): one text-encoder pass and max(length) decoding steps instead of
  one call per task. Greedy tasks fold whatever their lengths (each row
  stops at its own task's limit); beam-search tasks fold only with the same
  beams and the same length, since beam search's bookkeeping is per batch
  entry and depends on the limit;
* ``+static``: greedy calls decode with a static encoder-decoder cache that
  is kept between batches, with fixed shapes (batches padded to a few
  sizes, prompts to one length), so on CUDA transformers compiles the
  decoding step with CUDA graphs (``reduce-overhead``) once per shape.
  Beam search stays on the dynamic cache: it reorders the cache with
  ``index_select`` every step, new tensors that CUDA graphs cannot hold.
  On a CPU nothing is compiled (transformers compiles on accelerators only);
* ``+vision``: the vision tower's forward through ``torch.compile``.

``auto`` is ``tasks`` on a CPU (measured fastest there, docs/performance.md)
and ``folded+static`` on CUDA (argued from the design facts; awaiting
measurement on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def plan_groups(
    tasks: Sequence[str], beams: Callable[[str], int], limit: Callable[[str], int], fold: bool
) -> list[tuple[str, ...]]:
    """The tasks grouped into ``generate`` calls, in the order of *tasks*.

    Without *fold* every task is its own call. With it, greedy tasks share
    one call and beam-search tasks share a call with those of the same beams
    and the same ``max_new_tokens``.
    """
    if not fold:
        return [(t,) for t in tasks]
    groups: dict[tuple[int, int], list[str]] = {}
    for task in tasks:
        n = beams(task)
        groups.setdefault((n, 0 if n == 1 else limit(task)), []).append(task)
    return [tuple(g) for g in groups.values()]


def pad_prompts(prompts: Sequence[Any], length: int, pad_id: int) -> tuple[Any, Any]:
    """Prompt ids (1-D tensors) right-padded to *length*: the ids and their attention mask.

    Right, not left: BART's learned positions count from the first token
    whatever the mask says, so left padding would move every real token.
    """
    import torch

    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=prompts[0].device)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        mask[row, : len(prompt)] = 1
    return ids, mask


def bucket(n: int, batch_size: int) -> int:
    """The fixed batch size *n* images are padded to: the next power of 4, or *batch_size*.

    Each size is one more compiled shape (and warm-up); powers of 4 keep
    that to four for a batch of 64 and waste under 4x on a short batch.
    """
    size = 1
    while size < n:
        size *= 4
    return max(n, min(size, batch_size))


def row_limits(limits: Sequence[int], rows_each: int, forced_eos_id: Any, device: Any) -> tuple[Any, Any]:
    """A stopping criterion, and a logits processor or None, giving each row its own ``max_new_tokens``.

    *limits* is one limit per task, each task owning *rows_each* consecutive
    rows. The call runs to the largest limit; a row is finished once it has
    its own number of new tokens (later tokens are padding, as for a row that
    ended early). If the model forces ``</s>`` as the last token
    (*forced_eos_id*, its ``forced_eos_token_id``: an id or a list) the processor forces it
    at each row's own last step instead, and the call must then pass
    ``forced_eos_token_id=None``.
    """
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    per_row = torch.tensor(limits, device=device).repeat_interleave(rows_each)

    class _RowDone(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            # Decoder ids start with the decoder start token: new tokens = length - 1.
            return (input_ids.shape[1] - 1) >= per_row

    class _RowForcedEos(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            # What ForcedEOSTokenLogitsProcessor does at max_length - 1, per row; no host sync.
            last = (input_ids.shape[1] - 1) == per_row - 1
            forced = torch.full_like(scores, -float("inf"))
            forced[:, forced_eos_id] = 0
            return torch.where(last[:, None], forced, scores)

    return _RowDone(), (_RowForcedEos() if forced_eos_id is not None else None)
