"""SB3 feature extractors over the expert observation (`window`, `asset`, `global`; see
`observation.py`).

`CrossAssetExtractor`: one encoder shared by every asset reads that asset's window and account
entries into an embedding; multi-head self-attention (no positional encoding, so it treats the
assets as a set) mixes them; the output is the per-asset embeddings in asset order, their mean, and
an encoding of the global entries. The per-asset part lets the actor head give each asset its own
action; the mean is invariant to the order of the assets. SB3's `net_arch` heads follow.

`FlatExtractor`: every part flattened and concatenated (the plain MLP option: `net_arch` is then the
whole network).
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


def _box_shape(observation_space: spaces.Dict, key: str) -> tuple[int, ...]:
    """The shape of the Box entry `key` of an expert's Dict space."""
    space = observation_space[key]
    if not isinstance(space, spaces.Box):
        raise TypeError(f"observation_space[{key!r}] is a {type(space).__name__}; expected a Box")
    return space.shape


class CrossAssetExtractor(BaseFeaturesExtractor):
    """Shared per-asset encoder, attention across assets, pooled (see the module docstring).

    Args:
        observation_space: the expert's Dict space.
        embed_dim: size of each asset's embedding.
        attention_heads: heads of the cross-asset attention (must divide `embed_dim`).
        global_dim: size of the global entries' encoding.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        embed_dim: int = 32,
        attention_heads: int = 2,
        global_dim: int = 16,
    ) -> None:
        n, r, f = _box_shape(observation_space, "window")
        fa = _box_shape(observation_space, "asset")[1]
        g = _box_shape(observation_space, "global")[0]
        if embed_dim % attention_heads:
            raise ValueError(
                f"embed_dim={embed_dim} is not divisible by attention_heads={attention_heads}"
            )
        super().__init__(observation_space, features_dim=n * embed_dim + embed_dim + global_dim)
        self.n_assets = n
        self.window_encoder = nn.Sequential(
            nn.Flatten(start_dim=2), nn.Linear(r * f, embed_dim), nn.ReLU()
        )
        self.asset_encoder = nn.Sequential(nn.Linear(embed_dim + fa, embed_dim), nn.ReLU())
        self.attention = nn.MultiheadAttention(embed_dim, attention_heads, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.global_encoder = nn.Sequential(nn.Linear(g, global_dim), nn.ReLU())

    def encode_assets(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-asset embeddings after attention, `(B, N, embed_dim)`."""
        w = self.window_encoder(obs["window"])  # (B, N, R, F) -> (B, N, E)
        h = self.asset_encoder(torch.cat([w, obs["asset"]], dim=-1))
        mixed, _ = self.attention(h, h, h, need_weights=False)
        return self.norm(h + mixed)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[per-asset embeddings (asset order) | their mean | global encoding]`."""
        h = self.encode_assets(obs)
        pooled = h.mean(dim=1)
        return torch.cat(
            [h.flatten(start_dim=1), pooled, self.global_encoder(obs["global"])], dim=1
        )


class FlatExtractor(BaseFeaturesExtractor):
    """`window`, `asset` and `global` flattened and concatenated, in that order."""

    KEYS = ("window", "asset", "global")

    def __init__(self, observation_space: spaces.Dict) -> None:
        size = sum(int(torch.tensor(observation_space[key].shape).prod()) for key in self.KEYS)
        super().__init__(observation_space, features_dim=size)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat concatenation."""
        return torch.cat([obs[key].flatten(start_dim=1) for key in self.KEYS], dim=1)


EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {
    "cross_asset": CrossAssetExtractor,
    "mlp": FlatExtractor,
}
"""Extractor names an `ExpertSpec` may give."""
