"""How the run's datasets are split over the Ray Train workers."""

from __future__ import annotations

from ray.train import DataConfig

EVAL = "eval"


class TrainEqualEvalWhole(DataConfig):
    """The training stream in equal shares (ranks step in lockstep, so none may run out first);
    evaluation in unequal ones, every held-out sample exactly once (Ray's equal split drops up to
    one sample per worker, so metrics would move with the worker count). Evaluation code gathers
    uneven shares (training/tasks/clip_eval.py) and sums counts over ranks."""

    def __init__(self):
        super().__init__(datasets_to_split="all")

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        rest = {name: dataset for name, dataset in datasets.items() if name != EVAL}
        output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        if EVAL in datasets:
            dataset = datasets[EVAL].copy(datasets[EVAL])
            dataset.context.execution_options = self._resolve_execution_options(EVAL)
            if dataset.name is None:
                dataset.set_name(EVAL)
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False)):
                output[rank][EVAL] = split
        return output
