"""2:4 Linear weights as torch's semi-structured sparse tensors, for NVIDIA's sparse tensor cores (CUDA only).

``torch.sparse.to_sparse_semi_structured`` compresses a 2:4 weight (2 nonzeros in every 4 consecutive inputs,
the pattern of :mod:`sparsetrain.nm` along a Linear's inputs) into values plus metadata that cuSPARSELt /
CUTLASS multiply on Ampere and newer GPUs; ``F.linear`` then dispatches to them. Only float16 and bfloat16
are accepted here: they are the dtypes with a 2:4 kernel (float32 maps to a 1:2 TF32 pattern instead). The
shape limits (multiples of 16 to 128 rows and columns, by dtype and backend) are torch's: a weight it refuses
stays dense, with the reason logged.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.nm import NMPattern
from sparsetrain.sparse.nm_format import NMSpec, fits

SEMI_STRUCTURED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16})
"""Weight dtypes converted (2:4 kernels exist for these)."""

_TWO_FOUR = NMSpec(NMPattern(2, 4), 1)


def semi_structured_reason(linear: nn.Linear) -> str | None:
    """Why ``linear``'s weight cannot become semi-structured, or None when it can (before torch's shape check).

    Args:
        linear: the layer.

    Returns:
        A one-line reason (dtype, pattern, device), or None.
    """
    weight = linear.weight.detach()
    if weight.dtype not in SEMI_STRUCTURED_DTYPES:
        return f"dtype {weight.dtype} (semi-structured 2:4 needs float16 or bfloat16)"
    if not fits(weight, _TWO_FOUR):
        return "the weight is not 2:4 along its inputs (at most 2 nonzeros in every 4)"
    if weight.device.type != "cuda" or not torch.cuda.is_available():
        return f"weight on {weight.device} (semi-structured sparse tensors run on CUDA only)"
    return None


@torch.no_grad()
def to_semi_structured(linear: nn.Linear) -> str | None:
    """Replace ``linear.weight`` by its semi-structured form, in place, when possible.

    Args:
        linear: an ``nn.Linear`` on CUDA with a 2:4 float16/bfloat16 weight.

    Returns:
        None when converted; otherwise why not (the layer is then untouched).
    """
    reason = semi_structured_reason(linear)
    if reason is not None:
        return reason
    try:
        sparse = torch.sparse.to_sparse_semi_structured(linear.weight.detach().contiguous())
    except (RuntimeError, ValueError) as error:  # shape limits, or no kernel for this GPU
        return f"torch refused it: {str(error).splitlines()[0]}"
    linear.weight = nn.Parameter(sparse, requires_grad=False)
    return None
