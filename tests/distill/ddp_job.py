"""A tiny distillation job for the distributed test: run with `python -m torch.distributed.run --nproc_per_node N`
or plainly for one process. Writes the student's weights (rank 0) to the path given."""

import sys
from pathlib import Path

import torch

from edgedistill.distill.dataset import encode
from edgedistill.distill.losses import LossConfig
from edgedistill.distill.train import TrainConfig, train
from edgedistill.models import load_model


def main(teacher_dir: str, student_dir: str, out: str, per_device_batch: int) -> None:
    torch.manual_seed(0)
    teacher, student = load_model(teacher_dir), load_model(student_dir)
    recs = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}: where is order NW-{i}{i}?"}],
             "response": "It ships on Monday. " * (1 + i)} for i in range(4)]
    examples = encode(teacher[1], recs, 96).examples
    # 4 examples = one global batch per step, so every step sees every example whatever the sampler order.
    cfg = TrainConfig(max_steps=3, batch_size=per_device_batch, grad_accum=1, learning_rate=1e-2, warmup_steps=0,
                      save_steps=100, logging_steps=1)
    model, trainer = train(teacher, student, examples, Path(out).parent / "run", LossConfig("jsd", {"beta": 0.5}), cfg)
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out)
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly gloo shutdown; exiting with live gloo threads can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
