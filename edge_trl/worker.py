"""The training script `accelerate launch` starts on every process of an `edge-trl train` run.

Usage (written by `edge-trl train`, see its --dry-run): ``accelerate launch ... worker.py --spec RUN.yaml``. The spec
holds the resolved run; nothing here reads the command line of `edge-trl` itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def build_trainer(spec: dict[str, Any]) -> Any:
    from edge_trl import EdgeGRPOConfig, EdgeGRPOTrainer, embedded
    from edge_trl.data import load_any_dataset, prepare_math_dataset
    from edge_trl.rewards import get_reward_funcs

    args = EdgeGRPOConfig(**spec["trainer"])
    data = spec["dataset"]
    callbacks = []
    if data["source"] == embedded.EMBEDDED_DATASET:  # the built-in task: generated, plain prompts
        dataset = embedded.addition_dataset(50_000, seed=args.seed)
        from transformers import AutoTokenizer

        callbacks.append(embedded.held_out_callback(AutoTokenizer.from_pretrained(spec["model"])))
    else:
        columns = {key: data.get(key) for key in ("prompt_column", "answer_column", "solution_column")}
        dataset = prepare_math_dataset(
            load_any_dataset(data["source"], split=data["split"]), template=data["template"], **columns
        )
    peft_config = None
    if spec.get("lora") is not None:
        from peft import LoraConfig

        lora = spec["lora"]
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="CAUSAL_LM",
        )
    trainer = EdgeGRPOTrainer(
        spec["model"],
        reward_funcs=get_reward_funcs(spec["reward"]),
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.edge_run_info = {"method": spec["method"], "dataset": data["source"], "model": spec["model"]}
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="the run file written by `edge-trl train`")
    options = parser.parse_args(argv)
    spec = yaml.safe_load(options.spec.read_text())
    try:
        trainer = build_trainer(spec)
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    trainer.train(resume_from_checkpoint=spec.get("resume_from_checkpoint"))
    # Save the final model (or LoRA adapter) locally first: Trainer.save_model would also push, and a failed push
    # must not cost the result.
    push, trainer.args.push_to_hub = trainer.args.push_to_hub, False
    trainer.save_model()
    trainer.args.push_to_hub = push
    output_dir = trainer.args.output_dir
    if push:
        try:
            trainer.push_to_hub(dataset_name=spec["dataset"]["source"])
        except Exception as error:  # the Hub is remote: never lose the local result over it
            if trainer.is_world_process_zero():
                print(
                    f"error: pushing to the Hub failed ({type(error).__name__}: {error}). The trained model is "
                    f"saved in {output_dir}; retry with: hf upload {trainer.hub_model_id or '<repo-id>'} {output_dir}",
                    file=sys.stderr,
                    flush=True,
                )
            return 3
    if trainer.is_world_process_zero():
        print(f"edge-trl: training finished; model saved in {output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
