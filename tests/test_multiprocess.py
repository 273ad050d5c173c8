"""Two real processes: `accelerate launch --multi_gpu --num_processes 2` with use_cpu (torchrun + gloo)."""

from __future__ import annotations

import sys

import pytest
import torch

from _helpers import SCRIPTS, launch_two_ranks


def per_rank(ranks: list[dict], key: str) -> list[list[float]]:
    return [[entry[key] for entry in r["log_history"] if key in entry] for r in ranks]


@pytest.mark.slow
def test_two_cpu_processes_train_and_gather_metrics(tmp_path, tiny_model_path):
    ranks = launch_two_ranks(tiny_model_path, tmp_path, "core", 29533)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["backend"] == "gloo"
    assert all(r["params_changed"] for r in ranks)
    # DDP kept the replicas in sync, while each rank generated for its own prompts
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert ranks[0]["seen_prompts"] != ranks[1]["seen_prompts"]

    # Metrics are gathered across ranks: every rank logs the same global values for the same step
    # (rollout metrics come every num_iterations=2 steps, loss metrics every step).
    expected_counts = {
        "edge/eda_scale_max": 2,
        "edge/adv_var_after_eda": 2,
        "edge/collapsed_group_share": 2,
        "edge/kl_cov_penalty": 4,
        "edge/cov_mean": 4,
    }
    for key, count in expected_counts.items():
        values = per_rank(ranks, key)
        assert len(values[0]) == count, key
        assert values[0] == pytest.approx(values[1]), key
    penalties = [e["edge/kl_cov_penalty"] for e in ranks[0]["log_history"] if "edge/kl_cov_penalty" in e]
    assert penalties[1] > 0 and penalties[3] > 0


@pytest.mark.slow
def test_two_cpu_processes_correct_their_own_slices_with_gec(tmp_path, tiny_model_path):
    ranks = launch_two_ranks(tiny_model_path, tmp_path, "gec", 29534)
    assert all(r["params_changed"] for r in ranks)
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    # every response of both ranks was wrong and got corrected; counts are summed over the ranks
    assert per_rank(ranks, "gec/corrected_share")[0] == [1.0] * 4
    branch_totals = [
        sum(v)
        for v in zip(*(per_rank(ranks, f"gec/{b}_count")[0] for b in ("reflect", "answer", "solution")), strict=True)
    ]
    assert branch_totals == [12.0] * 4  # 6 completions per rank x 2 ranks, every step
    for key in ("gec/reflect_count", "gec/reflect_success", "gec/accuracy_before", "gec/accuracy_after",
                "gec/collapsed_group_share_after"):  # fmt: skip
        values = per_rank(ranks, key)
        assert len(values[0]) == 4 and values[0] == pytest.approx(values[1]), key
    assert sum(per_rank(ranks, "gec/accuracy_after")[0]) > 0


@pytest.mark.slow
def test_two_processes_dynamic_sampling_and_cov_step_scope(tmp_path, tiny_model_path):
    """One launch of 2 processes (tests/scripts/ds_cov_two_ranks.py) for two checks.

    cov_scope='step': micro-batch 8 x GA 1 and 4 x GA 2 (here, in this process) and 2 processes x 4 (the launch),
    on the same fixed rollout, select the same tokens and make the same update within 1e-6; 'micro_batch' does not.
    Dynamic sampling on 2 processes: the decision and the refill are collective (a group spans both ranks).
    """
    ranks = launch_two_ranks(tiny_model_path, tmp_path, None, 29535, script=SCRIPTS / "ds_cov_two_ranks.py")
    assert [r["world_size"] for r in ranks] == [2, 2]
    sys.path.insert(0, str(SCRIPTS))
    from split_runs import cov_split_run

    for scope in ("step", "micro_batch"):
        one = cov_split_run(str(tiny_model_path), tmp_path / f"{scope}-8x1", 8, 1, scope)
        accumulated = cov_split_run(str(tiny_model_path), tmp_path / f"{scope}-4x2", 4, 2, scope)
        two = {"selected": sorted(ranks[0][f"cov-{scope}"] + ranks[1][f"cov-{scope}"])}
        two["update"] = torch.load(tmp_path / f"cov-{scope}.pt")
        runs = (one, accumulated, two)
        assert all(len(run["selected"]) > 1 for run in runs)
        largest_difference = max(
            (run["update"][name] - one["update"][name]).abs().max().item() for run in runs[1:] for name in one["update"]
        )
        if scope == "step":
            assert one["selected"] == accumulated["selected"] == two["selected"]
            assert largest_difference < 1e-6
        else:  # per micro-batch: other centring, other k, other draws
            assert one["selected"] != accumulated["selected"] and one["selected"] != two["selected"]
            assert largest_difference > 1e-3

    ds = [r["ds"] for r in ranks]
    # one decision for both ranks: the same number of generation batches, in the sampler's order
    assert ds[0]["batches_drawn"] == ds[1]["batches_drawn"] == len(ds[0]["drawn"]) > 3
    for k, (rank0, rank1) in enumerate(zip(ds[0]["drawn"], ds[1]["drawn"], strict=True)):
        assert rank0 + rank1 == [a for a in ds[0]["order"][k] for _ in range(4)]
    for rank in ds:  # every trained response has an odd answer (the even-answer groups are dropped), 6 per rank
        assert [t["rows"] for t in rank["trained"]] == [6, 6, 6]
        answers = [
            next(a for q, a in rank["questions"].items() if q in text) for t in rank["trained"] for text in t["prompts"]
        ]
        assert all(int(a) % 2 == 1 for a in answers)
    assert ds[0]["param_checksum"] == pytest.approx(ds[1]["param_checksum"], rel=1e-9)
    for key in ("dynamic_sampling/gen_batches", "dynamic_sampling/kept_group_share", "loss"):
        values = per_rank([r["ds"] for r in ranks], key)
        assert len(values[0]) == 3 and values[0] == values[1], key
    assert sum(per_rank([r["ds"] for r in ranks], "dynamic_sampling/gen_batches")[0]) == len(ds[0]["drawn"])
