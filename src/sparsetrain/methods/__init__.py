"""The during-training methods, one short file per family."""

from .dst import SET, SNFS, DynamicSparse, RigL
from .gmp import GMP
from .granet import GraNet
from .srste import SRSTE
from .static import Static

__all__ = ["GMP", "GraNet", "RigL", "SET", "SNFS", "SRSTE", "Static", "DynamicSparse"]
