"""Every method's short CPU run reproduces its recorded logs and final weights bit for bit.

``tests/reference/method_runs.json`` holds, for each run below, every value logged per step (timings left out) and
the sha256 of the final weights' bytes with a few exact weight values. Rewrite it only for a deliberate numerical
change: ``python tests/test_bit_exact.py`` (then review the diff).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from edge_trl import EdgeGRPOTrainer
from edge_trl.testing import boxed_answer_reward, build_tiny_model, digit_share_reward, tiny_addition_dataset

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import tiny_config

REFERENCE = Path(__file__).parent / "reference" / "method_runs.json"
DATASET = tiny_addition_dataset(32)
CLIP_COV = {"cov_mode": "clip_cov", "clip_cov_ratio": 0.05, "clip_cov_lb": -1e9, "clip_cov_ub": 1e9}
KL_COV = {"cov_mode": "kl_cov", "kl_cov_ratio": 0.05, "num_iterations": 2}
STEP = {"cov_scope": "step", "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}
GEC = {"gec_reward_name": "boxed_answer_reward", "gec_max_new_tokens": 40}
# name -> (settings, rewards)
RUNS: dict[str, tuple[dict[str, Any], list]] = {
    "eda_group": ({"eda": True}, [digit_share_reward]),  # deferred to the loss forward (steps_per_generation 1)
    "eda_group_extra_forward": (
        {"eda": True, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4},
        [digit_share_reward],
    ),
    "eda_group_captured": ({"eda": True, "num_iterations": 2}, [digit_share_reward]),
    "eda_batch": ({"eda": True, "eda_scope": "batch"}, [digit_share_reward]),
    "gec": ({"gec": True, **GEC}, [boxed_answer_reward, digit_share_reward]),
    "edge": ({"gec": True, "eda": True, **GEC}, [boxed_answer_reward, digit_share_reward]),
    "force_reflection": ({"force_reflection": True, **GEC}, [boxed_answer_reward, digit_share_reward]),
    "clip_cov": (CLIP_COV, [digit_share_reward]),
    "kl_cov": (KL_COV, [digit_share_reward]),
    "clip_cov_step": ({**CLIP_COV, **STEP}, [digit_share_reward]),
    "kl_cov_step": ({**KL_COV, **STEP}, [digit_share_reward]),
    "dynamic_sampling": (
        {"dynamic_sampling": True, "dynamic_sampling_metric": "digit_share_reward", "eda": True},
        [digit_share_reward],
    ),
}


def _comparable(entry: dict[str, Any]) -> dict[str, Any]:
    """A log entry without wall-clock values (timings, throughput)."""
    timed = ("_s", "_runtime", "_per_second")
    return {k: v for k, v in entry.items() if not k.endswith(timed) and k not in ("total_flos", "step_time")}


def _encode(value: Any) -> Any:
    # JSON has no NaN/inf; floats round-trip exactly through repr.
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def run(name: str, model_path: Path, output_dir: Path) -> dict[str, Any]:
    settings, rewards = RUNS[name]
    args = tiny_config(output_dir, **settings)
    trainer = EdgeGRPOTrainer(str(model_path), reward_funcs=rewards, args=args, train_dataset=DATASET)
    trainer.train()
    state = trainer.model.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to(torch.float32).contiguous().numpy().tobytes())
    probe = state["lm_head.weight"] if "lm_head.weight" in state else next(iter(state.values()))
    return {
        "logs": [{k: _encode(v) for k, v in _comparable(e).items()} for e in trainer.state.log_history],
        "weights_sha256": digest.hexdigest(),
        "weights_sample": [float(v) for v in probe.flatten()[:4].tolist()],
    }


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


def test_reference_covers_every_run(reference):
    assert set(reference) == set(RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_run_matches_the_reference_bit_for_bit(tmp_path, tiny_model_path, reference, name):
    result = run(name, tiny_model_path, tmp_path / name)
    expected = reference[name]
    assert len(result["logs"]) == len(expected["logs"])
    for step, (got, want) in enumerate(zip(result["logs"], expected["logs"], strict=True)):
        # every recorded value bit for bit; a metric added since the reference was recorded is not compared
        assert set(want) <= set(got), f"{name}: log entry {step} lost {sorted(set(want) - set(got))}"
        assert {k: got[k] for k in want} == want, f"{name}: log entry {step} differs"
    assert result["weights_sample"] == expected["weights_sample"]
    assert result["weights_sha256"] == expected["weights_sha256"]


if __name__ == "__main__":  # regenerate the reference
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "model")
        results = {name: run(name, model, Path(folder) / name) for name in RUNS}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
