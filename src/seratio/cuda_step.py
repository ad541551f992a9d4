"""One training step captured as a CUDA graph and replayed, so a batch-32 step is not launch-bound.

An SE-ResNet-52 step is about 900 small kernels. Launched one by one from Python, the launches
take longer than the GPU needs to run them; a CUDA graph launches them all at once. The first
WARMUP_STEPS steps of a session are ordinary eager steps on a side stream (CUDA's rule before
capture: lazy initialisation such as the optimizer state must already have happened), then the
step is captured once and replayed for every later full batch. A batch of another size (the last,
partial one of an epoch) runs eagerly on the same parameters, so no image is dropped.

Correctness rests on the captured step touching only tensors whose storage never changes:
parameters, BN buffers, the optimizer state (capturable fused Adam keeps its step count on the
device, fused SGD its momentum buffers, and both read the learning rate from a device tensor
that `session.set_lr` fills in place, every step under `fast`'s schedule), and the static input
buffers this class copies each batch into.

Every CUDA call here runs under `torch.cuda.device(self.device)`, and the capture records on this
step's own side stream: by default a capture records on one stream per process, made on whichever
device was current at the first capture, so on `cuda:1` the step's kernels could go to one device
while the graph listens on another, and replays would do nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(float images, labels) -> (loss, logits): zero the grads, forward, backward, optimizer step."""
WARMUP_STEPS = 3


class GraphedStep:
    """Wraps an eager step; replays a captured copy of it for batches of `batch_size` images.

    The (loss, logits) a replay returns live in static buffers that the next replay overwrites,
    so the caller consumes them (accumulates metrics) before the next call, as `_train_epoch` does.
    """

    def __init__(
        self, step: StepFn, optimizer: torch.optim.Optimizer, batch_size: int, device: torch.device
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.step = step
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.device = device
        self.eager_steps = 0
        self.side_stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.cuda.device(self.device):
            if images.shape[0] != self.batch_size:
                return self._eager(images, labels)
            if self.graph is None and self.eager_steps < WARMUP_STEPS:
                self.eager_steps += 1
                return self._side_stream_step(images, labels)
            if self.graph is None:
                self._capture(images, labels)
            return self._replay(images, labels)

    def _eager(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step outside a capture: the warm-up steps and partial batches, by design.

        The capturable optimizer warns that running it uncaptured may be slow; here that is the
        plan, not a mistake, so the warning would only be noise in every run's log.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*", category=UserWarning)
            return self.step(images, labels)

    def _replay(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.graph is not None and self._static is not None
        static_images, static_labels, loss, logits = self._static
        static_images.copy_(images)
        static_labels.copy_(labels)
        self.graph.replay()
        return loss, logits

    def _side_stream_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step on a side stream, ordered after and before the default stream's work."""
        self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side_stream):
            loss, logits = self._eager(images, labels)
        torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
        return loss, logits

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the step on static buffers; recording runs nothing, so replay performs this batch."""
        static_images, static_labels = images.clone(), labels.clone()
        # Gradients must be allocated inside the capture, from the graph's private memory pool.
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.side_stream):
            loss, logits = self.step(static_images, static_labels)
        self.graph = graph
        self._static = (static_images, static_labels, loss, logits)
