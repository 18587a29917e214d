"""lm-evaluation-harness tasks at each evaluation (train.eval_tasks): checked at startup, run on the model in
memory, logged beside val_loss as eval/<task>/<metric>.

lm-eval is a development dependency: it is imported only when train.eval_tasks is set.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError
from Tokenizer import TextTokenizer
from train.config import TrainConfig
from train.engine import Engine


class EvalTasks:
    """The run's lm-eval tasks; building it checks them (a ConfigError names train.eval_tasks and the bad name)."""

    def __init__(self, t: TrainConfig):
        self.tasks, self.include, self.limit = list(t.eval_tasks), t.eval_tasks_include, t.eval_tasks_limit
        self.include_defaults = False
        if not self.tasks:
            return
        if self.include is not None and not Path(self.include).is_dir():
            raise ConfigError(f"train.eval_tasks_include {self.include} is not a directory")
        try:
            from inference.harness import locate_tasks
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("lm_eval"):
                raise
            raise ConfigError("train.eval_tasks needs lm-eval: pip install -r requirements-dev.txt") from None
        # lm-eval's own task index takes seconds to build: only when the include directory lacks a task.
        self.include_defaults, unknown = locate_tasks(self.tasks, self.include)
        if unknown:
            where = f"{self.include} or lm-eval's own tasks" if self.include else "lm-eval's tasks"
            raise ConfigError(f"train.eval_tasks: unknown task(s) {', '.join(unknown)} (not found in {where})")

    def run(self, engine: Engine, tokenizer: TextTokenizer) -> dict[str, float]:
        """{"eval/<task>/<metric>": value} on the unwrapped model; {} without tasks, and on ranks other than each
        node's first (lm-eval reports there only; rank 0 logs). Every rank runs them (under FSDP each forward
        gathers the weights); RNG state and train mode are left as they were."""
        if not self.tasks:
            return {}
        from inference.harness import evaluate_tasks

        with engine.generation() as model:
            scores = evaluate_tasks(model, tokenizer, self.tasks, self.include, self.limit,
                                    include_defaults=self.include_defaults)
        return {f"eval/{name}": value for name, value in scores.items()}
