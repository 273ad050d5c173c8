"""FSDP2 (torch's ``fully_shard``) on 2 CPU processes over gloo, without accelerate, which cannot apply FSDP on CPU
(``edge_trl.accelerate_setup.FSDP_NEEDS_GPU``). Run by tests/test_distributed.py with torchrun.

Usage: fsdp2_cpu.py MODEL_DIR OUTPUT_DIR. Exercises what edge-trl relies on under FSDP:

* GEC's collective generation with uneven work: under FSDP every forward all-gathers each layer's shards, so both
  ranks must step together; rank 0 generates for one throw-away prompt (what ``_generate_reflections`` does on a rank
  with nothing to reflect) while rank 1 generates for three, and rank 0 stops 20 tokens earlier;
* a training step on the sharded model;
* the final save check (``edge_trl.saved_model``): a full state dict gathered to rank 0 loads, and a save of each
  rank's local shards (FSDP's sharded state dict written as if it were the model) is caught.

Rank 0 writes OUTPUT_DIR/result.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from edge_trl.saved_model import expected_parameters, saved_model_problems
from edge_trl.worker import exit_now


def main() -> None:
    model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    expected = expected_parameters(model)  # full shapes, from the sharded parameters (DTensors)

    torch.manual_seed(rank)  # different samples, so the ranks stop at different lengths
    prompts = torch.randint(3, 300, (1 if rank == 0 else 3, 6))
    with torch.no_grad():
        # different stopping points too (as EOS gives in GEC): transformers keeps a finished FSDP rank stepping
        generated = model.generate(prompts, max_new_tokens=4 if rank == 0 else 24, do_sample=True, pad_token_id=0)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(3, 300, (2, 12))
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    local = {name: tensor.to_local().detach().clone() for name, tensor in model.state_dict().items()}
    lengths = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
    dist.all_gather(lengths, torch.tensor([generated.shape[1]]))
    if rank == 0:
        plain = AutoModelForCausalLM.from_pretrained(model_dir)
        plain.save_pretrained(output_dir / "full", state_dict=full)
        plain.save_pretrained(output_dir / "shards", state_dict=local)
        reloaded = AutoModelForCausalLM.from_pretrained(output_dir / "full")
        result = {
            "generated_lengths": [int(n) for n in lengths],
            "loss": float(loss.detach()),
            "full_problems": saved_model_problems(output_dir / "full", expected),
            "shard_problems": saved_model_problems(output_dir / "shards", expected),
            "reloaded_equal": all(
                torch.equal(full[name], p) for name, p in reloaded.state_dict().items() if name in full
            ),
            "moved": any(not torch.equal(full[name], p) for name, p in plain.state_dict().items() if name in full),
        }
        (output_dir / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now(0)  # as edge_trl.worker does: a complete run must not fail in the C++ teardown of gloo/DeepSpeed
