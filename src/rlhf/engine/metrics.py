"""Where metrics go: a JSONL file (always), TensorBoard, W&B, and the console progress bar."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("rlhf")


class MetricsSink(Protocol):
    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None: ...

    def close(self) -> None: ...


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


class JsonlSink:
    """One JSON object per logged step: ``{"step": 10, "split": "train", "loss": ...}``.

    Appends, so a resumed run continues the same file; rows after the resume step that a
    crashed run had already written are dropped first, so every step appears once. A line that
    is not a JSON row (the torn last line of a run killed while writing it) is dropped with a
    warning naming the file and line.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.kept_rows: dict[str, dict[str, Any]] = {}  # the last row kept on resume per split
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            kept = []
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    step = row.get("step", 0)
                except (json.JSONDecodeError, AttributeError):
                    logger.warning(
                        "%s:%d: not a JSON row (torn by a crash?); dropped", path, number
                    )
                    continue
                if isinstance(step, int | float) and step <= resume_step:
                    kept.append(line)
                    self.kept_rows[str(row.get("split"))] = row
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        elif resume_step is None:
            path.write_text("", encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        row = {"step": step, "split": prefix} | {k: _json_number(v) for k, v in metrics.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def close_sinks(sinks: Sequence[MetricsSink], timeout: float) -> None:
    """Close every sink, waiting at most ``timeout`` seconds in all: a sink that is still
    closing then (TensorBoard's writer flushing to a slow disk, W&B uploading) is left to
    finish in the background, with a warning, and the run ends anyway."""
    deadline = time.monotonic() + timeout
    for sink in sinks:
        name = type(sink).__name__

        def close(sink: MetricsSink = sink, name: str = name) -> None:
            try:
                sink.close()
            except Exception as error:  # a log that fails to close must not fail the run
                logger.warning("%s: closing failed (%s)", name, error)

        worker = threading.Thread(target=close, name=f"close-{name}", daemon=True)
        worker.start()
        worker.join(max(deadline - time.monotonic(), 0.0))
        if worker.is_alive():
            logger.warning(
                "%s did not close within %g s; its last records may be missing", name, timeout
            )


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    def __init__(self, project: str, run_name: str, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise RuntimeError(
                "wandb=true needs the wandb package: pip install 'rlhf[wandb]'"
            ) from None
        self._run = wandb.init(project=project, name=run_name, config=dict(config))

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        self._run.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._run.finish()
