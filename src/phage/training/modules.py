"""torch modules behind the registry's blocks and a VNode's local objective head."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """``x + W2·relu(W1·norm(x))``: a pre-norm residual MLP block."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the block's correction to its input."""
        out: torch.Tensor = x + self.down(torch.relu(self.up(self.norm(x))))
        return out


class PoolHead(nn.Module):
    """An auxiliary classifier over features of any rank: mean over all but the channel axis, then linear.

    Decoupled greedy learning gives every VNode such a head; its loss is the VNode's
    local objective. For rank-1 features it is a plain linear layer.
    """

    def __init__(self, channels: int, classes: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.linear = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool to ``(batch, channels)`` and classify."""
        if self.rank == 2:  # (batch, tokens, width): mean over tokens
            x = x.mean(dim=1)
        elif self.rank == 3:  # (batch, channels, h, w): mean over space
            x = x.mean(dim=(2, 3))
        return self.linear(x)  # type: ignore[no-any-return]
