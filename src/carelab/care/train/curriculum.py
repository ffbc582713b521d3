"""Easy→hard curriculum for GRPO as a step-aware sampler that lives in the main process.

The public CARE code computes the hard-data probability inside DataLoader workers, which never see the
step change until they respawn. Here the sampler itself derives the optimizer step from how many prompt
groups it has yielded, so the schedule is exact, reproducible per seed, and replays identically when a
resumed Trainer skips the batches it already consumed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Sampler


def hard_probability(step: int, p_max: float = 0.5, ramp_steps: int = 1) -> float:
    """``min(p_max, p_max · step / ramp_steps)`` — the paper's linear ramp to 50 % hard data.

    >>> [hard_probability(s, 0.5, 10) for s in (0, 5, 10, 20)]
    [0.0, 0.25, 0.5, 0.5]
    """
    if ramp_steps <= 0:
        return p_max
    return min(p_max, p_max * step / ramp_steps)


@dataclass
class CurriculumPlan:
    """Which rows each generation chunk draws: ``chunks[k]`` lists dataset indices, ``hard[k]`` their levels."""

    chunks: list[list[int]]
    hard: list[list[bool]]
    steps: list[int]


class CurriculumSampler(Sampler[int]):
    """Yield prompt indices in GRPO's repeat layout, drawing hard rows with the ramped probability.

    The dataset is ``easy rows + hard rows`` (hard rows start at ``n_easy``). Layout matches TRL's
    ``RepeatSampler``: each chunk of ``prompts_per_chunk`` prompts is repeated ``repeat_count`` times and
    each prompt ``num_generations`` times. Chunk ``k`` is used at optimizer step ``k · steps_per_chunk``.
    With ``n_hard == 0`` (or ``enabled=False``, the no-curriculum ablation) only easy rows are drawn.
    """

    def __init__(self, n_easy: int, n_hard: int, *, num_generations: int, prompts_per_chunk: int,
                 repeat_count: int, num_chunks: int, steps_per_chunk: float = 1.0, p_max: float = 0.5,
                 ramp_steps: int | None = None, seed: int = 0, enabled: bool = True, log_path: str | None = None):
        if n_easy <= 0:
            raise ValueError("the curriculum needs at least one easy row")
        self.n_easy, self.n_hard = n_easy, n_hard
        self.num_generations, self.prompts_per_chunk = num_generations, prompts_per_chunk
        self.repeat_count, self.num_chunks = repeat_count, num_chunks
        self.steps_per_chunk = steps_per_chunk
        self.p_max = p_max
        self.ramp_steps = ramp_steps if ramp_steps is not None else max(1, int(num_chunks * steps_per_chunk))
        self.seed, self.enabled = seed, enabled and n_hard > 0
        self.log_path = log_path

    def plan(self) -> CurriculumPlan:
        """The whole deterministic draw (pure function of the seed and sizes)."""
        rng = random.Random(self.seed)
        easy_order: list[int] = []
        hard_order: list[int] = []

        def take(pool: list[int], n: int, offset: int) -> int:
            if not pool:  # reshuffle a fresh epoch of this pool
                pool.extend(offset + i for i in rng.sample(range(n), n))
            return pool.pop()

        chunks, hard_flags, steps = [], [], []
        for k in range(self.num_chunks):
            step = int(k * self.steps_per_chunk)
            p = hard_probability(step, self.p_max, self.ramp_steps) if self.enabled else 0.0
            idx, flags = [], []
            for _ in range(self.prompts_per_chunk):
                is_hard = self.enabled and rng.random() < p
                idx.append(take(hard_order, self.n_hard, self.n_easy) if is_hard else take(easy_order, self.n_easy, 0))
                flags.append(is_hard)
            chunks.append(idx)
            hard_flags.append(flags)
            steps.append(step)
        return CurriculumPlan(chunks, hard_flags, steps)

    def write_log(self) -> None:
        """Save the planned hard share per step beside the run (what the schedule actually drew)."""
        if not self.log_path:
            return
        plan = self.plan()
        path = Path(self.log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for step, flags in zip(plan.steps, plan.hard, strict=True):
                p = hard_probability(step, self.p_max, self.ramp_steps) if self.enabled else 0.0
                fh.write(json.dumps({"step": step, "p_hard": p, "hard_share": sum(flags) / len(flags)}) + "\n")

    def __iter__(self) -> Iterator[int]:
        for chunk in self.plan().chunks:
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.num_generations):
                        yield index

    def __len__(self) -> int:
        return self.num_chunks * self.prompts_per_chunk * self.repeat_count * self.num_generations
