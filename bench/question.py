"""How long a person's question (``ask``/``find``) waits for the model while a batch is in flight.

The tiny random-weight Florence-2 (built here), made to decode long batches;
a question is asked once the batch is decoding, and the bench prints how long
it waited for its turn, how many decoding steps the batch made meanwhile, and
how long the batch took in all. Without turns the question would wait for the
whole batch.

    python bench/question.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import ModelConfig
from daemon.imaging import decode
from daemon.model.ask import ask
from daemon.model.resident import ResidentAnalyzer
from daemon.tasks import task_named
from daemon.testing.helpers import CORPUS
from daemon.testing.tiny_florence import build_tiny_florence


def main() -> int:
    folder = build_tiny_florence(Path(tempfile.mkdtemp(prefix="fw-question-")))
    model = ResidentAnalyzer(ModelConfig(name=str(folder), num_beams=1, max_new_tokens=80))
    model.load().model.generation_config.min_new_tokens = 60  # a long batch: 4 tasks x 60+ steps
    image = decode(CORPUS / "pillow" / "hopper.jpg").image
    steps: list[float] = []
    real_step = model.turns.step

    def step() -> None:
        steps.append(time.perf_counter())
        real_step()

    model.turns.step = step  # type: ignore[method-assign]
    batch_times: list[float] = []

    def batch() -> None:
        start = time.perf_counter()
        model.analyze([image] * 4)
        batch_times.append(time.perf_counter() - start)

    worker = threading.Thread(target=batch)
    worker.start()
    while len(steps) < 5:  # the batch is decoding
        time.sleep(0.001)
    asked, before = time.perf_counter(), len(steps)
    with model.question() as analyzer:
        waited, steps_meanwhile = time.perf_counter() - asked, len(steps) - before
        ask(analyzer, image, task_named("caption"))
    answered = time.perf_counter() - asked
    worker.join()
    step_s = (steps[-1] - steps[0]) / max(1, len(steps) - 1)
    print(f"batch of 4 images: {batch_times[0]:.2f} s, {len(steps)} decoding steps of {step_s * 1000:.1f} ms")
    print(f"question waited {waited * 1000:.1f} ms for its turn ({steps_meanwhile} step(s) of the batch)")
    print(f"question answered {answered:.2f} s after it was asked, the batch still under way")
    print(f"the wait is {waited / batch_times[0]:.3f} of the batch's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
