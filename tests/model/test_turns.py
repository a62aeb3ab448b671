"""A person's question runs before the queued batch: between two of its decoding steps, never beside it.

Counted in decoding steps, not seconds: the tiny Florence-2 from disk, made to decode long batches.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from daemon.config import ModelConfig
from daemon.imaging import decode
from daemon.model.ask import ask
from daemon.model.resident import ResidentAnalyzer
from daemon.model.turns import Turns
from daemon.tasks import task_named


def test_questions_go_first_and_never_share_the_model() -> None:
    turns, log, inside = Turns(), [], []
    asked, stop = threading.Event(), threading.Event()

    def batch() -> None:
        with turns.batch():
            for n in range(10_000):
                inside.append("batch")
                assert inside == ["batch"], inside
                inside.pop()
                log.append(n)
                if n == 5:
                    asked.set()
                turns.step()
                if stop.is_set():
                    return

    worker = threading.Thread(target=batch)
    worker.start()
    asked.wait(10)
    before = len(log)
    with turns.question():
        got = len(log)
        inside.append("question")
        assert inside == ["question"]
        inside.pop()
    stop.set()
    worker.join(10)
    assert got - before <= 1  # at most the step under way when the question came
    assert not worker.is_alive()


def test_a_batch_waits_for_a_question_already_running() -> None:
    turns, order = Turns(), []
    with turns.question():
        worker = threading.Thread(target=lambda: (turns.batch().__enter__(), order.append("batch")))
        worker.start()
        worker.join(0.2)
        order.append("question done")
    worker.join(10)
    assert order == ["question done", "batch"]


def test_a_question_runs_between_two_decoding_steps_of_a_real_batch(tiny_model: Path, corpus: Path) -> None:
    model = ResidentAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=40))
    model.load().model.generation_config.min_new_tokens = 30  # every task decodes 30 steps or more: a long batch
    steps: list[str] = []
    started = threading.Event()
    real_step = model.turns.step

    def step() -> None:
        steps.append("batch")
        started.set()
        real_step()

    model.turns.step = step  # type: ignore[method-assign]
    image = decode(corpus / "pillow" / "hopper.jpg").image
    results: list[Any] = []
    batch = threading.Thread(target=lambda: results.append(model.analyze([image, image])))
    batch.start()
    assert started.wait(120)
    before = len(steps)
    with model.question() as analyzer:
        waited = len(steps) - before
        answer = ask(analyzer, image, task_named("caption"))
        steps.append("question")
    batch.join(300)
    assert results and len(results[0]) == 2 and isinstance(answer, str)
    assert waited <= 1, f"the question waited {waited} decoding steps"
    after = len(steps) - steps.index("question") - 1
    assert after >= 30, f"the batch had only {after} steps left: the question did not go first"
