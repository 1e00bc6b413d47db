"""A tiny distillation job for the distributed tests: run with `python -m torch.distributed.run --nproc_per_node N`
or plainly for one process. Writes the student's weights (rank 0) to the path given, and job.json beside them
(world size, whether FSDP and the chunked loss were on). Optional: a logit cache folder to train from (the
teacher is then not loaded) and a kd_chunk. Environment: JOB_FSDP, JOB_SHARD_TEACHER, JOB_SAVE_STEPS (checkpoint
every N steps) and JOB_RESUME (continue the run folder from its last checkpoint)."""

import os
import sys
from pathlib import Path

import torch

from edgedistill.distill.dataset import encode
from edgedistill.distill.settings import LossSettings
from edgedistill.distill.train import TrainSettings, train
from edgedistill.models import load_model


def records():
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}: where is order NW-{i}{i}?"}],
             "response": "It ships on Monday. " * (1 + i)} for i in range(4)]


def main(teacher_dir: str, student_dir: str, out: str, per_device_batch: int, cache_dir: str = "",
         kd_chunk: int = 0) -> None:
    import json

    from edgedistill.distill import logit_cache

    torch.manual_seed(0)
    teacher, student = load_model(teacher_dir), load_model(student_dir)
    data = encode(teacher[1], records(), 96)
    examples = data.examples
    cache = logit_cache.load(Path(cache_dir), data) if cache_dir else None
    if cache is not None:
        teacher = (None, teacher[1])
    # 4 examples = one global batch per step, so every step sees every example whatever the sampler order.
    cfg = TrainSettings(steps=3, batch_size=per_device_batch, grad_accum=1, lr=1e-2, warmup_steps=0,
                      save_steps=int(os.environ.get("JOB_SAVE_STEPS", "100")), logging_steps=1, kd_chunk=kd_chunk,
                      fsdp=os.environ.get("JOB_FSDP", ""), shard_teacher=bool(os.environ.get("JOB_SHARD_TEACHER")), precision="fp32")
    model, trainer = train(teacher, student, examples, Path(out).parent / "run", LossSettings(loss="jsd", beta=0.5, kd_weight=1.0), cfg,
                           cache=cache, resume=bool(os.environ.get("JOB_RESUME")))
    if trainer.is_world_process_zero():
        Path(out).with_name("job.json").write_text(json.dumps({
            "world_size": trainer.accelerator.num_processes, "fsdp": bool(trainer.is_fsdp_enabled),
            "chunked": bool(trainer.chunked)}))
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out)
    import torch.distributed as dist

    if dist.is_initialized():  # an orderly gloo shutdown; exiting with live gloo threads can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *(sys.argv[5:6]), *map(int, sys.argv[6:7]))
