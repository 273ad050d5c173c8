"""The pure functions of edge_trl.core_algos on hand-computed cases and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from edge_trl import (
    aggregate_token_loss,
    clip_cov_mask,
    collapsed_group_share,
    entropy_driven_advantages,
    entropy_scale,
    kl_cov_mask,
    kl_cov_penalty,
    ppo_clipped_mask,
    response_entropy,
    token_covariance,
)
from edge_trl.core_algos import masked_mean, num_selected_tokens, step_cov_selection, token_keys

# Four responses, two tokens each; response 2's second token is padding (its entropy 99 must never count).
ENTROPIES = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, 99.0], [4.0, 4.0]])
MASK = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
ADVANTAGES = torch.tensor([1.0, -1.0, 1.0, -1.0])


# -- Entropy-Driven Advantage ----------------------------------------------------------------------------------------


def test_response_entropy_ignores_padding():
    assert response_entropy(ENTROPIES, MASK).tolist() == [1.0, 2.0, 1.0, 4.0]


def test_eda_batch_scope_by_hand():
    # H = [1, 2, 1, 4], mean 2 -> scale [2, 1, 2, 0.5]
    out = entropy_driven_advantages(ADVANTAGES, ENTROPIES, MASK, group_size=None)
    torch.testing.assert_close(out, torch.tensor([2.0, -1.0, 2.0, -0.5]))


def test_eda_group_scope_by_hand():
    # groups (1, 2): mean 1.5 -> [1.5, 0.75]; (1, 4): mean 2.5 -> [2.5, 0.625]
    out = entropy_driven_advantages(ADVANTAGES, ENTROPIES, MASK, group_size=2)
    torch.testing.assert_close(out, torch.tensor([1.5, -0.75, 2.5, -0.625]))


def test_eda_confident_correct_pushed_up_and_confident_wrong_pushed_down():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ent = torch.tensor([[0.5], [1.5], [0.5], [1.5]])
    out = entropy_driven_advantages(adv, ent, torch.ones(4, 1), group_size=None)
    assert out[0] > 1.0 > out[1] > 0  # confident correct gets the larger push up
    assert out[2] < -1.0 < out[3] < 0  # confident wrong gets the larger push down


def test_eda_per_token_advantages_are_scaled_per_response():
    per_token = ADVANTAGES.unsqueeze(-1).expand(4, 2)
    out = entropy_driven_advantages(per_token, ENTROPIES, MASK)
    torch.testing.assert_close(out[:, 0], torch.tensor([2.0, -1.0, 2.0, -0.5]))
    assert out.shape == (4, 2)


def test_eda_all_rewards_equal_keeps_zero_advantages():
    out = entropy_driven_advantages(torch.zeros(4), ENTROPIES, MASK, group_size=2)
    assert torch.equal(out, torch.zeros(4))


def test_eda_zero_entropy_is_finite_and_clamped():
    ent = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    out = entropy_driven_advantages(torch.tensor([1.0, -1.0]), ent, torch.ones(2, 2))
    assert torch.isfinite(out).all()
    clamped = entropy_driven_advantages(torch.tensor([1.0, -1.0]), ent, torch.ones(2, 2), max_scale=10.0)
    assert clamped[0].item() == pytest.approx(10.0)
    all_zero = entropy_driven_advantages(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.ones(2, 2))
    torch.testing.assert_close(all_zero, torch.tensor([1.0, -1.0]))  # everyone at the floor: factor 1


def test_eda_response_without_valid_token_is_left_alone_and_not_counted():
    mask = torch.tensor([[1, 1], [0, 0], [1, 1], [1, 1]])
    scale = entropy_scale(response_entropy(ENTROPIES, mask), mask.sum(-1) > 0, group_size=None)
    # response 1 has no valid token; response 2 now counts both entropies [1, 99] -> H = 50
    h = torch.tensor([1.0, 50.0, 4.0])
    expected = h.mean() / h
    torch.testing.assert_close(scale[[0, 2, 3]], expected)
    assert scale[1].item() == 1.0


def test_eda_min_max_scale_and_no_gradient():
    ent = ENTROPIES.clone().requires_grad_(True)
    out = entropy_driven_advantages(ADVANTAGES, ent, MASK, min_scale=0.8, max_scale=1.5)
    torch.testing.assert_close(out, torch.tensor([1.5, -1.0, 1.5, -0.8]))
    assert not out.requires_grad


def test_entropy_scale_rejects_partial_groups():
    with pytest.raises(ValueError, match="group_size=3"):
        entropy_scale(torch.ones(4), group_size=3)


def test_collapsed_group_share():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert collapsed_group_share(rewards, group_size=2) == pytest.approx(2 / 3)
    assert collapsed_group_share(torch.tensor([0.0, 1.0, 0.5, 0.2]), group_size=2) == 0.0


# -- Covariance ------------------------------------------------------------------------------------------------------


def test_token_covariance_by_hand():
    adv = torch.tensor([1.0, -1.0])
    logps = torch.tensor([[-1.0, -3.0], [-2.0, 123.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # valid A: 1, 1, -1 -> mean 1/3; valid log pi: -1, -3, -2 -> mean -2
    expected = torch.tensor([[2 / 3 * 1.0, 2 / 3 * -1.0], [-4 / 3 * 0.0, 0.0]])
    torch.testing.assert_close(token_covariance(adv, logps, mask), expected)
    # the same advantages given per token
    torch.testing.assert_close(token_covariance(adv.unsqueeze(-1).expand(2, 2), logps, mask), expected)


def test_token_covariance_is_detached_and_zero_for_equal_advantages():
    logps = torch.randn(3, 4, requires_grad=True)
    cov = token_covariance(torch.ones(3), logps, torch.ones(3, 4))
    assert not cov.requires_grad
    assert torch.equal(cov, torch.zeros(3, 4))


def test_batch_mean_of_token_covariance_is_the_covariance():
    torch.manual_seed(0)
    adv, logps = torch.randn(64), torch.randn(64, 1)
    cov = token_covariance(adv, logps, torch.ones(64, 1))
    expected = torch.cov(torch.stack([adv, logps.squeeze(-1)]), correction=0)[0, 1]
    torch.testing.assert_close(cov.mean(), expected)


@pytest.mark.parametrize(
    ("ratio", "num_valid", "expected"), [(2e-4, 10, 1), (0.25, 10, 2), (0.3, 10, 3), (0.5, 0, 0), (1.0, 7, 7)]
)
def test_num_selected_tokens_rounding(ratio, num_valid, expected):
    assert num_selected_tokens(ratio, num_valid) == expected


def test_clip_cov_mask_selects_only_candidates_in_bounds():
    cov = torch.tensor([[0.5, 2.0, 3.0, 6.0], [1.0, 4.0, 5.0, 4.5]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    exclude = torch.zeros(2, 4, dtype=torch.bool)
    exclude[0, 2] = True
    # strict bounds 1 < cov < 5; (0,2) excluded, (1,3) padded -> candidates (0,1), (1,1)
    selected = clip_cov_mask(cov, mask, ratio=1.0, lb=1.0, ub=5.0, exclude=exclude)
    assert selected.nonzero().tolist() == [[0, 1], [1, 1]]


def test_clip_cov_mask_count_reproducibility_and_uniformity():
    cov = torch.full((4, 25), 2.0)
    mask = torch.ones(4, 25)
    a = clip_cov_mask(cov, mask, 0.05, 1.0, 5.0, generator=torch.Generator().manual_seed(3))
    b = clip_cov_mask(cov, mask, 0.05, 1.0, 5.0, generator=torch.Generator().manual_seed(3))
    assert a.sum().item() == 5 and torch.equal(a, b)
    counts = torch.zeros(100)
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    for _ in range(draws):
        counts += clip_cov_mask(cov, mask, 0.05, 1.0, 5.0, generator=gen).flatten().float()
    # each token is picked with probability 5/100 -> 200 expected picks, binomial sd ~13.8
    assert (counts - 200).abs().max() < 70


def test_clip_cov_mask_edge_cases():
    empty = clip_cov_mask(torch.ones(2, 3) * 2, torch.zeros(2, 3), 0.5, 1.0, 5.0)
    assert not empty.any()  # no valid token
    none_in_bounds = clip_cov_mask(torch.ones(2, 3) * 9, torch.ones(2, 3), 0.5, 1.0, 5.0)
    assert not none_in_bounds.any()
    one_valid = torch.zeros(2, 3)
    one_valid[1, 2] = 1
    assert clip_cov_mask(torch.full((2, 3), 2.0), one_valid, 2e-4, 1.0, 5.0).nonzero().tolist() == [[1, 2]]


def test_kl_cov_mask_top_k_ties_and_padding():
    cov = torch.tensor([[3.0, 1.0, 3.0], [100.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # the 100 is padding and must never be chosen
    selected = kl_cov_mask(cov, mask, ratio=0.5)  # 5 valid -> k = 2 of the three 3.0 ties: earliest two win
    assert selected.nonzero().tolist() == [[0, 0], [0, 2]]
    one_valid = torch.zeros(2, 3)
    one_valid[0, 1] = 1
    assert kl_cov_mask(cov, one_valid, 2e-3).nonzero().tolist() == [[0, 1]]
    assert not kl_cov_mask(cov, torch.zeros(2, 3), 0.5).any()


def test_ppo_clipped_mask():
    ratio = torch.tensor([[1.5, 0.5, 1.0, 1.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]])
    assert ppo_clipped_mask(ratio, adv, 0.2, 0.2).tolist() == [[True, False, False, False, True]]
    assert ppo_clipped_mask(ratio[:, :1], torch.tensor([1.0]), 0.2, 0.2).tolist() == [[True]]


def test_kl_cov_penalty_value_and_gradient():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0]])
    selected = torch.tensor([[True, False]])
    penalty = kl_cov_penalty(logps, old, selected, coef=2.0)
    torch.testing.assert_close(penalty.detach(), torch.tensor([[1.0, 0.0]]))
    penalty.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[2.0, 0.0]]))  # d/dx 2|x - old| = 2 sign(x - old)
    on_policy = kl_cov_penalty(old.clone().requires_grad_(True), old, selected, 1.0)
    assert on_policy.sum().item() == 0.0


def test_aggregate_token_loss_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_token_loss(loss, mask, "grpo").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate_token_loss(loss, mask, "bnpo").item() == pytest.approx(10.0 / 4)
    assert aggregate_token_loss(loss, mask, "dr_grpo", max_completion_length=5).item() == pytest.approx(10.0 / 10)
    assert aggregate_token_loss(loss, mask, "dapo", normalizer=8.0).item() == pytest.approx(10.0 / 8)
    with pytest.raises(ValueError, match="cispo"):
        aggregate_token_loss(loss, mask, "cispo")
    assert math.isfinite(aggregate_token_loss(loss, torch.zeros(2, 3), "bnpo").item())


def test_token_covariance_centred_on_given_means():
    generator = torch.Generator().manual_seed(3)
    adv, logps = torch.randn(3, generator=generator), torch.randn(3, 5, generator=generator)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    means = (masked_mean(adv.unsqueeze(-1).expand(3, 5), mask), masked_mean(logps, mask))
    assert torch.allclose(token_covariance(adv, logps, mask, centre=means), token_covariance(adv, logps, mask))
    shifted = token_covariance(adv, logps, mask, centre=(0.0, 0.0))
    assert torch.allclose(shifted, adv.unsqueeze(-1) * logps * mask)


def test_step_cov_selection_ignores_the_order_and_split_of_the_tokens():
    generator = torch.Generator().manual_seed(0)
    cov = torch.randn(50, generator=generator)
    keys = token_keys(torch.arange(10), 5).flatten()
    candidates = torch.rand(50, generator=generator) > 0.3
    for mode in ("kl_cov", "clip_cov"):
        chosen = step_cov_selection(mode, cov, keys, candidates, 50, 0.2, torch.Generator().manual_seed(7))
        assert chosen.numel() == 10  # k = max(1, int(0.2 * 50)) over the whole step
        perm = torch.randperm(50, generator=generator)  # another split and order of the same tokens
        again = step_cov_selection(
            mode, cov[perm], keys[perm], candidates[perm], 50, 0.2, torch.Generator().manual_seed(7)
        )
        assert torch.equal(chosen, again)
        if mode == "kl_cov":
            assert torch.equal(chosen, torch.sort(keys[cov.topk(10).indices]).values)
        else:
            assert set(chosen.tolist()) <= set(keys[candidates].tolist())
    with pytest.raises(ValueError, match="clip_cov and kl_cov"):
        step_cov_selection("other", cov, keys, candidates, 50, 0.2)
