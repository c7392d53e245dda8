"""Feature extractors: shapes for one and three assets; the cross-asset encoding is permutation
equivariant per asset and its pooled part invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from carry_pipeline.lib.training.extractors import CrossAssetExtractor, FlatExtractor


def _space(n: int, rows: int = 6, feats: int = 4, fa: int = 3, g: int = 5) -> spaces.Dict:
    box = lambda *s: spaces.Box(-1e6, 1e6, s, np.float32)  # noqa: E731
    return spaces.Dict({"window": box(n, rows, feats), "asset": box(n, fa), "global": box(g)})


def _obs(space: spaces.Dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((batch, *s.shape), generator=g) for k, s in space.spaces.items()}


@pytest.mark.parametrize("n", [1, 3])
def test_output_shapes(n: int) -> None:
    torch.manual_seed(0)
    space = _space(n)
    cross = CrossAssetExtractor(space, embed_dim=8, attention_heads=2, global_dim=4)
    out = cross(_obs(space, 7))
    assert out.shape == (7, n * 8 + 8 + 4) == (7, cross.features_dim)
    flat = FlatExtractor(space)
    assert flat(_obs(space, 7)).shape == (7, n * 6 * 4 + n * 3 + 5) == (7, flat.features_dim)


def test_permuting_assets_permutes_embeddings_and_keeps_the_pooled_part() -> None:
    torch.manual_seed(0)
    space = _space(3)
    cross = CrossAssetExtractor(space, embed_dim=8, attention_heads=2, global_dim=4).eval()
    obs = _obs(space, 5)
    perm = torch.tensor([2, 0, 1])
    permuted = {
        "window": obs["window"][:, perm],
        "asset": obs["asset"][:, perm],
        "global": obs["global"],
    }
    with torch.no_grad():
        h, hp = cross.encode_assets(obs), cross.encode_assets(permuted)
        out, outp = cross(obs), cross(permuted)
    torch.testing.assert_close(hp, h[:, perm])
    pooled = slice(3 * 8, 3 * 8 + 8 + 4)
    torch.testing.assert_close(outp[:, pooled], out[:, pooled])
    # ... and the per-asset part is not invariant: the heads can tell the assets apart.
    assert not torch.allclose(outp[:, :24], out[:, :24])
    # Attention mixes the assets: changing asset 2's window changes asset 0's embedding.
    other = {**obs, "window": obs["window"].clone()}
    other["window"][:, 2] += 1.0
    with torch.no_grad():
        assert not torch.allclose(cross.encode_assets(other)[:, 0], h[:, 0])
