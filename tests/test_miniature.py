"""benchmarks/miniature.py runs end to end on a very short schedule and writes its CSV, plot and claims."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "miniature.py"


@pytest.mark.slow
def test_miniature_short_run(tmp_path):
    spec = importlib.util.spec_from_file_location("miniature", SCRIPT)
    miniature = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(miniature)
    out = tmp_path / "mini"
    claims = miniature.main(["--methods", "eda", "gec", "kl-cov", "--seeds", "0", "--steps", "4", "--batch-size", "16",
                             "--eval-every", "2", "--eval-problems", "10", "--out", str(out)])  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert {r["method"] for r in rows} == {"grpo", "eda", "gec", "kl-cov"}  # the vanilla baseline is always run
    assert {r["step"] for r in rows} >= {"0", "1", "2", "3", "4"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    names = [claim for claim, _, _ in claims]
    assert "vanilla GRPO's entropy falls" in names
    assert "eda: EDA raises advantage variance" in names and "gec: GEC lowers the collapsed-group share" in names
    assert any(n.startswith("kl-cov keeps entropy higher") for n in names)
    assert json.loads((out / "summary.json").read_text())["methods"]["kl-cov"]["final_held_out_greedy"] is not None


def test_supervised_control_runs_for_the_given_time():
    import time

    from edge_trl.embedded import supervised_control

    start = time.perf_counter()
    result = supervised_control(seconds=2.0)
    assert 2.0 <= time.perf_counter() - start < 30
    assert result["steps"] > 0 and 0.0 <= result["greedy"] <= 1.0 and 0.0 <= result["sampled"] <= 1.0


EVIDENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence.py"


@pytest.mark.slow
def load_evidence():
    spec = importlib.util.spec_from_file_location("evidence", EVIDENCE)
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    return evidence


@pytest.mark.slow
def test_evidence_smoke_produces_every_column(tmp_path):
    """The evidence grid at smoke scale (every method of rounds 1 and 2, 2 seeds, 4 steps): every column, table row,
    claim and plot is produced (the pipeline, not the science). Then round 3's peers on one seed, reusing the first
    grid's GRPO, Clip-Cov and KL-Cov runs."""
    evidence = load_evidence()
    out = tmp_path / "evidence"
    methods = [m for m in evidence.METHODS if m not in evidence.ENTROPY_PEERS]
    summary = evidence.main(["--smoke", "--seeds", "0", "1", "--methods", *methods, "--out", str(out)])

    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted((m, s) for m in methods for s in (0, 1))
    for r in runs:
        assert [p["step"] for p in r["evals"]] == [0, 2, 4]
        for point in r["evals"]:
            assert set(evidence.EVAL_COLUMNS) <= set(point) and {"train_s", "load1", "gen_tokens"} <= set(point)
            assert all(0.0 <= point[c] <= 1.0 for c in evidence.EVAL_COLUMNS)
        tokens = [p["gen_tokens"] for p in r["evals"]]
        assert tokens[0] == 0 and tokens[0] < tokens[1] < tokens[2] == r["gen_tokens"], (r["method"], tokens)
        logged = {k for e in r["logs"] for k in e}
        assert {"entropy", "reward", "edge/collapsed_group_share", "diag/cov"} <= logged, r["method"]
        expected = {
            "gec": {"gec/corrected_share", "gec/collapsed_group_share_before"},
            "edge": {"gec/corrected_share"},
            "clip-cov": {"edge/clip_cov_selected_share"},
            "kl-cov": {"edge/kl_cov_selected_share", "edge/kl_cov_penalty"},
            "dynamic-sampling": {"dynamic_sampling/gen_batches", "dynamic_sampling/kept_group_share"},
            "gec-masked": {"gec/corrected_share", "gec/reflect_count"},
            "gec-prefix-masked": {"gec/corrected_share", "gec/reflect_count"},
        }.get(r["method"], set())
        assert expected <= logged, r["method"]
    # Generated tokens count every generation call: 2 rollouts of 2 x 16 completions of at most 14 tokens for GRPO; GEC's
    # reflections and dynamic sampling's extra batches (the untrained warm-up leaves most groups collapsed) add more.
    by_run = {(r["method"], r["seed"]): r["gen_tokens"] for r in runs}
    for seed in (0, 1):
        assert 2 * 32 <= by_run["grpo", seed] <= 2 * 32 * evidence.MAX_COMPLETION
        assert by_run["eda", seed] == by_run["grpo", seed]  # EDA changes advantages, not what is generated first
        assert by_run["gec", seed] > by_run["grpo", seed] and by_run["gec-masked", seed] > by_run["grpo", seed]
        batches = [e["dynamic_sampling/gen_batches"] for e in next(
            r for r in runs if r["method"] == "dynamic-sampling" and r["seed"] == seed)["logs"] if "dynamic_sampling/gen_batches" in e]  # fmt: skip
        assert by_run["dynamic-sampling", seed] > by_run["grpo", seed] * (sum(batches) / len(batches)) * 0.5
    # The warm-up of each seed is saved once and shared by the methods; a second call resumes without rerunning.
    assert sorted(p.name for p in (out / "warmups").glob("seed-*.json")) == ["seed-0.json", "seed-1.json"]

    table = summary["table"]["methods"]
    assert set(table) == set(methods) and all(len(rows) == 2 for rows in table.values())
    for rows in table.values():
        for key in ("final hard/box/pass@1", "equal-time hard/strict/pass@1", "final all/box/pass@16", "entropy final"):
            assert all(row[key] is not None for row in rows), key
    verdicts = {c["claim"]: c["verdict"] for c in summary["claims"]}
    real = {"held", "not held", "not significant", "not held (opposite, significant)"}
    assert all(v in real for claim, v in verdicts.items() if claim.startswith("baseline")), verdicts
    # Method-vs-GRPO comparisons need 3 paired seeds: with 2, no verdict rather than a meaningless interval.
    assert all(v == "not measured (< 3 seeds)" for claim, v in verdicts.items() if "than GRPO" in claim), verdicts
    names = " ".join(c["claim"] for c in summary["claims"])
    for method in set(methods) - {"grpo"}:  # each has its claims against GRPO
        assert method in names, method
    for budget in ("equal steps", "equal generated tokens", "equal time"):
        assert f"dynamic-sampling has higher hard pass@16 than GRPO at {budget}" in names
    assert "GRPO's entropy falls by at least half" in names and "GRPO's pass@16 falls from its peak" in names
    assert "gec-masked has higher hard pass@1 than gec" in names
    table = summary["table"]
    assert table["common_gen_tokens"] == min(r["gen_tokens"] for r in runs)
    grpo_0 = next(v for v in table["methods"]["grpo"] if v["seed"] == 0)
    assert grpo_0["equal-tokens hard/box/pass@1"] is not None
    markdown = (out / "table.md").read_text()
    assert all(f"| {m} |" in markdown for m in methods) and "corr(Cov_t, dH_t)" in markdown
    assert "hard pass@16, equal tokens" in markdown and "entropy final / start" in markdown
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((out / "runs").glob("*.lock")) and not list((out / "warmups").glob("*.lock"))

    # Round 3: TRL's entropy controls on seed 0; the first grid's Clip-Cov and KL-Cov runs are read, not rerun, and
    # GRPO is run again (--reuse-methods).
    peers_out = tmp_path / "peers"
    peers = evidence.main(["--smoke", "--grid", "peers", "--methods", *evidence.GRIDS["peers"]["methods"], "--seeds",
                           "0", "--out", str(peers_out), "--warmup-dir", str(out / "warmups"), "--reuse",
                           str(out / "runs")])  # fmt: skip
    ran = sorted(p.stem for p in (peers_out / "runs").glob("*.json"))
    assert ran == sorted(f"{m}-0" for m in ["grpo", *evidence.ENTROPY_PEERS])
    table = peers["table"]["methods"]
    assert list(table) == ["grpo", "clip-cov", "kl-cov", *evidence.ENTROPY_PEERS]
    reused = json.loads((out / "runs" / "kl-cov-0.json").read_text())
    assert table["kl-cov"][0]["final all/box/pass@16"] == reused["evals"][-1]["all/box/pass@16"]
    logs = {m: json.loads((peers_out / "runs" / f"{m}-0.json").read_text())["logs"] for m in evidence.ENTROPY_PEERS}
    # The bonus's coefficient is constant; the adaptive one starts at 0 and stays there while the entropy (of an
    # untrained warm-up, far above 0.16 nats) is above its target.
    assert {e["entropy_coef"] for e in logs["entropy-bonus"]} == {evidence.METHODS["entropy-bonus"]["entropy_coef"]}
    assert all(e["entropy"] > 0.16 for e in logs["adaptive-entropy"])
    assert {e["entropy_coef"] for e in logs["adaptive-entropy"]} == {0.0}
    names = [c["claim"] for c in peers["claims"]]
    for method in evidence.ENTROPY_PEERS:
        for baseline in ("grpo", "clip-cov", "kl-cov"):
            assert f"{method} keeps more entropy (final / start) than {baseline}" in names
            assert f"{method} has higher pass@16 at equal pass@1 than {baseline}" in names
        assert any(n.startswith(f"{method} is stable") for n in names)
    markdown = (peers_out / "table.md").read_text()
    assert "entropy kept: entropy final / start, method - baseline" in markdown and "| top-entropy-20 |" in markdown


@pytest.mark.slow
def test_evidence_reflect_smoke(tmp_path, capsys):
    """The reflect grid at smoke scale (worked sums, the reflective warm-up cut to one step, GRPO and GEC with the
    wrong prefix masked and with both masks, 4 steps): the warm-up's reflection rates, the reflection branch's success
    and redo share during training, the pre-registered claims and the table are produced."""
    evidence = load_evidence()
    out = tmp_path / "reflect"
    summary = evidence.main(["--smoke", "--grid", "reflect", "--methods", "gec-prefix-masked", "gec-fully-masked",
                             "--seeds", "0", "--out", str(out)])  # fmt: skip
    runs = {r["method"]: r for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*.json"))}
    assert set(runs) == {"grpo", "gec-prefix-masked", "gec-fully-masked"}
    # Worked sums are longer than a box: 2 rollouts of 32 completions, each at most a full trace.
    assert 2 * 32 <= runs["grpo"]["gen_tokens"] <= 2 * 32 * evidence.embedded_reflect.MAX_TRACE
    for method in ("gec-prefix-masked", "gec-fully-masked"):
        reflected = [e for e in runs[method]["logs"] if e.get("reflect/count")]
        assert reflected and all(0 <= e["reflect/fixed"] <= e["reflect/count"] for e in reflected)
        assert all(0 <= e["reflect/redo"] <= e["reflect/count"] for e in reflected)
    assert not any("reflect/count" in e for e in runs["grpo"]["logs"])
    (warmup,) = summary["warmups"]
    assert warmup["wrong_responses"] > 0 and 0 <= warmup["fixed_without_cue"] <= warmup["wrong_responses"]
    assert 0.0 <= warmup["fresh_try_rate"] <= 1.0
    assert warmup["example_with_cue"].count(" Wait!") >= 1
    row = summary["table"]["methods"]["gec-prefix-masked"][0]
    assert 0.0 <= row["reflection success run"] <= 1.0
    claims = " ".join(c["claim"] for c in summary["claims"])
    assert "precondition: after the warm-up the cue" in claims
    assert "gec-prefix-masked: the reflection branch turns more wrong responses right" in claims
    assert "exploratory: gec-fully-masked has higher hard pass@1 than gec-prefix-masked" in claims
    table = (out / "table.md").read_text()
    assert "GEC's reflection branch" in table and "What the reflection branch writes after the cue" in table
    # --warmups-only resumes the saved warm-up (no retraining) and decides the precondition before any run.
    again = evidence.main(["--smoke", "--grid", "reflect", "--seeds", "0", "--out", str(out), "--warmups-only"])
    assert again["warmups"] == summary["warmups"]
    assert "precondition: after the warm-up the cue" in capsys.readouterr().out


def test_reflect_task_traces_and_grid_preset():
    from edge_trl import embedded_reflect as reflect

    assert reflect.trace(437, 285) == "7+5=12 3+8+1=12 4+2+1=7 \\boxed{722}"
    assert reflect.trace(999, 999).endswith("\\boxed{1998}") and len(reflect.trace(999, 999)) + 1 == reflect.MAX_TRACE
    wrong = reflect.trace(437, 285, wrong_column=1, delta=1)
    assert wrong == "7+5=12 3+8+1=13 4+2+1=7 \\boxed{732}"  # the wrong column's carry and digits follow from it
    assert reflect.is_exact_trace("437+285=", reflect.trace(437, 285)) and not reflect.is_exact_trace("437+285=", wrong)
    evidence = load_evidence()
    cli = evidence.parse_args(["--grid", "reflect"])
    assert cli.task == "reflect" and set(cli.methods) == {"grpo", "gec", "gec-masked", "gec-prefix-masked", "eda",
                                                          "edge", "dynamic-sampling"}  # fmt: skip
    assert evidence.METHODS["gec-prefix-masked"]["gec_mask_wrong_prefix"] is True
    task = evidence.Task("reflect")
    assert task.max_completion == reflect.MAX_TRACE and task.gec_settings["gec_reflection_cue"] == " Wait!"
    assert evidence.grade(reflect.trace(12, 34), "46", "strict", task, "12+34=")
    assert not evidence.grade(reflect.trace(12, 34), "46", "strict", evidence.Task("addition"), "12+34=")


def test_evidence_grid_presets_and_job_locks(tmp_path):
    """--grid sets round 2's flags and explicit flags win; a job lock keeps a second process off a running job and
    is taken over when its process is gone, so a killed grid resumes."""
    import subprocess
    import sys

    evidence = load_evidence()
    assert evidence.GRIDS["entropy"]["methods"] == ["grpo", "clip-cov", "kl-cov"]
    assert set(evidence.GRIDS["advantage"]["methods"]) == {"grpo", "dynamic-sampling", "gec", "gec-masked", "eda",
                                                          "edge"}  # fmt: skip
    assert evidence.METHODS["gec-masked"]["gec_mask_injected"] is True and evidence.METHODS["eda"] == {"eda": True}
    entropy = evidence.parse_args(["--grid", "entropy", "--seeds", "0"])
    assert (entropy.steps, entropy.learning_rate, entropy.train_hard_share) == (3000, 2e-4, 0.0)
    assert entropy.methods == ["grpo", "clip-cov", "kl-cov"] and entropy.seeds == [0]
    assert entropy.warmup_dir == evidence.GRIDS["advantage"]["warmup_dir"]  # both parts share the warm-ups
    overridden = evidence.parse_args(["--grid", "entropy", "--steps", "10", "--out", str(tmp_path / "x")])
    assert overridden.steps == 10 and overridden.warmup_dir == tmp_path / "x" / "warmups"
    first = evidence.parse_args([])
    assert (first.steps, first.train_hard_share, first.methods) == (200, 0.5, evidence.FIRST_GRID_METHODS)
    # Round 3: the entropy grid's setting; its Clip-Cov and KL-Cov runs are read from round 2, GRPO is run again.
    peers = evidence.parse_args(["--grid", "peers"])
    assert (peers.steps, peers.learning_rate, peers.train_hard_share) == (3000, 2e-4, 0.0)
    assert peers.methods == ["grpo", "clip-cov", "kl-cov", *evidence.ENTROPY_PEERS]
    assert peers.reuse == [evidence.GRIDS["entropy"]["out"] / "runs"]
    assert peers.warmup_dir == peers.out / "warmups" != entropy.warmup_dir  # rebuilt in this environment
    assert peers.reuse_methods == ["clip-cov", "kl-cov"]
    assert evidence.METHODS["top-entropy-20"] == {"top_entropy_quantile": 0.2}
    assert evidence.METHODS["clip-higher"] == {"epsilon_high": 0.28}

    lock = tmp_path / "grpo-0.lock"
    assert evidence.take_job(lock) and lock.read_text() == str(__import__("os").getpid())
    assert not evidence.take_job(lock)  # held by a live process (this one)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(gone.stdout.strip())  # a process that has exited: a killed grid's lock
    assert evidence.take_job(lock)

    grid = tmp_path / "grid.json"
    first, second = {"id": "a", "runs": ["grpo-0"]}, {"id": "b", "runs": []}
    evidence.save_session(grid, first)
    evidence.save_session(grid, second)
    first["runs"].append("eda-0")
    evidence.save_session(grid, first)  # another process's session survives this one's updates
    assert json.loads(grid.read_text())["sessions"] == [second, first]


def test_pass_at_k_and_bootstrap():
    spec = importlib.util.spec_from_file_location("evidence", EVIDENCE)
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    assert evidence.pass_at_k(16, 0, 16) == 0.0 and evidence.pass_at_k(16, 1, 16) == 1.0
    assert evidence.pass_at_k(16, 4, 1) == pytest.approx(0.25)
    assert evidence.pass_at_k(16, 1, 4) == pytest.approx(0.25)  # one correct of 16: in a random 4-subset 1/4 of times
    mean, low, high = evidence.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and 1.0 <= low < 3.0 < high <= 5.0
    assert evidence.verdict((0.1, 0.05, 0.2)) == "held" and evidence.verdict((0.1, -0.05, 0.2)) == "not significant"
    assert evidence.verdict((-0.1, -0.2, -0.05), better="lower") == "held"


def test_analysis_prefers_the_grids_own_runs_over_reused_ones(tmp_path):
    """A grid that reruns a reused method's seed reads its own run, whatever the folders' names sort to."""
    evidence = load_evidence()
    own, other = tmp_path / "reflect-diagnosis", tmp_path / "reflect"  # "reflect" sorts before "reflect-diagnosis"
    for folder, runs in ((own, [("gec", 0)]), (other, [("gec", 0), ("gec", 1), ("grpo", 0), ("eda", 0)])):
        (folder / "runs").mkdir(parents=True)
        for method, seed in runs:
            record = {"method": method, "seed": seed, "source": folder.name}
            (folder / "runs" / f"{method}-{seed}.json").write_text(json.dumps(record))
    runs = evidence.load_runs(own, ["grpo", "gec"], [0, 1], [other / "runs"], ["grpo", "gec"])
    assert [(r["seed"], r["source"]) for r in runs["gec"]] == [(0, "reflect-diagnosis"), (1, "reflect")]
    assert [r["source"] for r in runs["grpo"]] == ["reflect"]
    # a method not named in reuse_methods is never read from another grid
    assert evidence.load_runs(own, ["grpo", "gec"], [0, 1], [other / "runs"], ["gec"])["grpo"] == []
