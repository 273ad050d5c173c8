"""EdgeGRPOConfig validation: clear errors that name the field and the fix."""

from __future__ import annotations

import logging
from dataclasses import fields

import pytest
from trl import GRPOConfig

from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer
from edge_trl.methods.covariance import COV_MODES

from _helpers import tiny_config

EDGE_FIELDS = {f.name for f in fields(EdgeGRPOConfig)} - {f.name for f in fields(GRPOConfig)}


def test_defaults_are_all_off(tmp_path):
    config = tiny_config(tmp_path)
    assert (config.eda, config.cov_mode, config.eda_scope) == (False, "none", "group")
    assert (config.clip_cov_ratio, config.clip_cov_lb, config.clip_cov_ub) == (2e-4, 1.0, 5.0)
    assert (config.kl_cov_ratio, config.kl_cov_coef) == (2e-3, 1.0)
    assert config.eda_max_scale == 10.0 and config.eda_entropy_floor > 0


def test_every_new_field_has_help():
    new = {f.name for f in fields(EdgeGRPOConfig)} - {f.name for f in fields(GRPOConfig)}
    assert new >= {"eda", "eda_scope", "cov_mode", "clip_cov_ratio", "kl_cov_ratio", "kl_cov_coef"}
    for f in fields(EdgeGRPOConfig):
        if f.name in new:
            assert f.metadata.get("help"), f"{f.name} has no help text"


@pytest.mark.parametrize(("spelling", "mode"), [("clip-cov", "clip_cov"), ("KL-Cov", "kl_cov"), ("none", "none")])
def test_cov_mode_spellings(tmp_path, spelling, mode):
    assert tiny_config(tmp_path, cov_mode=spelling, num_iterations=2).cov_mode == mode


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cov_mode": "clipcov"}, "cov_mode='clipcov' is not supported"),
        ({"eda_scope": "global"}, "eda_scope='global'"),
        ({"kl_cov_ratio": 20.0}, "kl_cov_ratio=20.0 must be a fraction"),
        ({"clip_cov_ratio": 0.0}, "clip_cov_ratio=0.0 must be a fraction"),
        ({"clip_cov_lb": 5.0, "clip_cov_ub": 1.0}, "clip_cov_lb=5.0 must be smaller than clip_cov_ub=1.0"),
        ({"eda_entropy_floor": 0.0}, "eda_entropy_floor=0.0 must be a positive"),
        ({"eda_max_scale": -1.0}, "eda_max_scale=-1.0"),
        ({"eda_min_scale": 2.0, "eda_max_scale": 1.0}, "eda_min_scale=2.0 is larger than eda_max_scale=1.0"),
        ({"kl_cov_coef": -1.0}, "kl_cov_coef=-1.0 must be >= 0"),
        ({"cov_mode": "clip_cov", "loss_type": "cispo"}, "loss_type='cispo'"),
        ({"cov_mode": "kl_cov", "loss_type": "sapo", "num_iterations": 2}, "loss_type='sapo'"),
        ({"gec": True, "gec_reflect_prob": 0.6}, "gec_reflect_prob \\+ gec_answer_prob \\+ gec_solution_prob = 1.1"),
        (
            {"gec": True, "gec_answer_prob": -0.1, "gec_reflect_prob": 0.85},
            "gec_answer_prob=-0.1 must be a probability",
        ),
        ({"gec": True, "gec_answer_template": "the answer is X"}, "has no '\\{answer\\}' placeholder"),
        ({"gec": True, "gec_max_new_tokens": 0}, "gec_max_new_tokens=0 must be >= 1"),
        ({"cov_scope": "rollout"}, "cov_scope='rollout' is not supported"),
        (
            {"cov_mode": "clip_cov", "cov_scope": "step", "gradient_accumulation_steps": 2, "steps_per_generation": 1},
            "steps_per_generation \\* num_iterations = 1 must be a multiple of gradient_accumulation_steps=2",
        ),
        ({"dynamic_sampling": True, "max_num_gen_batches": -1}, "max_num_gen_batches=-1 must be >= 0"),
        ({"dynamic_sampling": True, "dynamic_sampling_metric": " "}, "dynamic_sampling_metric is empty"),
    ],
)
def test_bad_values_name_the_field(tmp_path, overrides, message):
    pattern = message if "\\" in message else message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=pattern):
        tiny_config(tmp_path, **overrides)


def test_gec_defaults_follow_the_paper(tmp_path):
    config = tiny_config(tmp_path, gec=True)
    assert (config.gec_reflect_prob, config.gec_answer_prob, config.gec_solution_prob) == (0.5, 0.25, 0.25)
    assert config.gec_reflection_cue == " Wait! Something is wrong here."
    assert config.gec_answer_template.replace("{answer}", "42") == (
        "\nWait! Something is wrong here. After verification, the correct answer is \\boxed{42}."
    )
    assert config.gec_max_new_tokens == 256 and not config.gec_mask_injected
    assert config.gec_correction_active and tiny_config(tmp_path, force_reflection=True).gec_correction_active


def test_kl_cov_no_op_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_trl.config"):
        config = tiny_config(tmp_path, cov_mode="kl_cov")
    assert config.kl_cov_is_noop
    assert "no-op" in caplog.text and "num_iterations=2" in caplog.text
    caplog.clear()
    for active in ({"num_iterations": 2}, {"steps_per_generation": 2}):
        with caplog.at_level(logging.WARNING, logger="edge_trl.config"):
            assert not tiny_config(tmp_path, cov_mode="kl_cov", **active).kl_cov_is_noop
        assert "no-op" not in caplog.text


def test_trainer_refuses_plain_grpo_config(tmp_path, tiny_model_path):
    with pytest.raises(TypeError, match="EdgeGRPOConfig"):
        EdgeGRPOTrainer(str(tiny_model_path), reward_funcs=[], args=tiny_config(tmp_path, GRPOConfig))


def test_kl_cov_no_op_warning_is_the_text_the_cli_prints(tmp_path, caplog):
    from edge_trl.validation import kl_cov_noop_message

    with caplog.at_level(logging.WARNING, logger="edge_trl.config"):
        config = tiny_config(tmp_path, cov_mode="KL-Cov")
    steps = (config.gradient_accumulation_steps, config.steps_per_generation, config.num_iterations)
    assert kl_cov_noop_message(*steps) in caplog.text


def test_the_checks_run_without_trl_on_plain_settings():
    """`edge-trl train` validates the resolved settings with the same rules, without importing trl."""
    from types import SimpleNamespace

    from edge_trl.validation import validate_edge_fields

    defaults = {f.name: f.default for f in fields(EdgeGRPOConfig) if f.name in EDGE_FIELDS}
    settings = SimpleNamespace(**{**defaults, "loss_type": "dapo", "use_vllm": False, "vllm_mode": "server"})
    settings.cov_mode = "Clip-Cov"
    validate_edge_fields(settings, cov_modes=tuple(COV_MODES))
    assert settings.cov_mode == "clip_cov"
    settings.clip_cov_ratio = 0.0
    with pytest.raises(ValueError, match=r"clip_cov_ratio=0\.0 must be a fraction"):
        validate_edge_fields(settings, cov_modes=tuple(COV_MODES))
