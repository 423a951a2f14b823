"""Comparing floats computed along two different paths (batched vs alone, server vs direct, padded vs not).

Two paths that run other kernels or other shapes may pick other reduction orders: on one CPU they agree bit for bit,
on another in the 8th digit. Tests compare such results with a tolerance, and greedy choices only where the argmax
margin is far wider than the paths' disagreement (``greedy_margin``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MARGIN = 1e-4
"""The smallest top-1 minus top-2 logit gap a greedy token may have when a test promises that two paths pick the
same tokens: the fp32 scores of the tiny models differ by 1e-7..6e-7 between batched and alone (measured on the three
archs of tests/steer/test_steer_rows.py), so a gap over 100 times the widest cannot flip. Margins of random prompts
do come thinner (8.5e-6 for one qwen3_5 seed): a test that fails on it needs other prompts, not a smaller MARGIN."""


def assert_topk_close(
    got: Sequence[Sequence[tuple[int, float]]],
    dense: torch.Tensor,
    top: int,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """``got`` holds, per token, the (feature, activation) pairs of the ``top`` largest positive entries of the
    reference code ``dense`` (tokens x features), strongest first, as computed along another path. The values must
    match ``dense`` within tolerance; the set may differ only among near-ties: a feature left out may beat one kept
    by no more than the tolerance, and a feature at ~0 may be there or not."""
    assert len(got) == len(dense), (len(got), len(dense))
    for t, (pairs, row) in enumerate(zip(got, dense.tolist(), strict=True)):
        tol = [atol + rtol * abs(v) for v in row]
        ids = [i for i, _ in pairs]
        assert len(set(ids)) == len(ids) <= top, (t, pairs)
        for i, v in pairs:
            assert abs(v - row[i]) <= tol[i], f"token {t} feature {i}: {v} vs {row[i]}"
            assert v > 0
        values = [v for _, v in pairs]
        assert all(a >= b - 2 * atol for a, b in zip(values, values[1:])), (t, values)  # strongest first
        floor = min(values) if len(pairs) == top else 0.0  # a full list: the weakest kept; else every positive one
        for i, ref in enumerate(row):
            if i not in ids:
                assert ref <= floor + 2 * tol[i], f"token {t}: feature {i} ({ref}) left out, the weakest kept {floor}"


def greedy_margin(model, inputs: dict[str, torch.Tensor], max_new_tokens: int, **generate_kwargs) -> float:
    """The smallest top-1 minus top-2 logit gap over the rows and steps of a greedy generation of ``inputs``."""
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
    scores = torch.stack(out.scores, 1).float()  # (rows, steps, vocab)
    top2 = scores.topk(2, dim=-1).values
    return float((top2[..., 0] - top2[..., 1]).min())


def assert_topk_ids_close(
    ids: torch.Tensor, reference: torch.Tensor, largest: bool = True, rtol: float = 1e-4, atol: float = 1e-4
) -> None:
    """``ids`` (rows x k), computed along another path, are a top-k (bottom-k unless ``largest``) of each row of
    ``reference`` up to ties within the tolerance: in order, and no id left out beats the weakest kept by more."""
    sign = 1.0 if largest else -1.0
    ref = sign * reference.double()
    picked = ref.gather(1, ids.long())
    tol = atol + rtol * ref.abs().amax(1, keepdim=True)
    assert (picked[:, :-1] >= picked[:, 1:] - tol).all(), "not strongest first"
    assert all(len(set(r)) == len(r) for r in ids.tolist()), "an id twice"
    exact = ref.topk(ids.shape[1], dim=1).values
    torch.testing.assert_close(picked, exact, rtol=0, atol=float(tol.max()))  # each rank's value, up to a near-tie
