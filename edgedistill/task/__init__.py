"""task: a task as data (task.yaml): its output kinds (each: parse, validate, score), the sandbox that runs
model-written code, and task distillation scored side by side (teacher, student before and after)."""

from edgedistill.task.kinds import Parsed, kinds
from edgedistill.task.spec import Task, TaskError, load_task

__all__ = ["Parsed", "Task", "TaskError", "kinds", "load_task"]
