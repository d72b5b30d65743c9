"""Tasks: the record schema, generators of synthetic tasks, loaders of public benchmarks, graders."""

from pipeline.tasks.schema import Task, TaskKind, read_tasks, write_tasks

__all__ = ["Task", "TaskKind", "read_tasks", "write_tasks"]
