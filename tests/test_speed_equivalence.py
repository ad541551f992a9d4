"""The fast paths compute the paper's training, not something else.

- The optimized CPU step (channels_last, fused Adam, batched augmentation, and torch.compile for
  long runs) follows the same loss trajectory as a plain NCHW step with torch's default Adam.
- The CUDA-graph step wrapper, driven through fake CUDA primitives on the CPU, performs exactly
  the eager updates: warm-up, one capture, replays on static buffers, an eager partial batch.
- A checkpoint written with GPU optimizer options (fused, capturable, tensor lr) resumes on CPU.
- K trials trained concurrently in K processes equal the same trials trained one after another.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from seratio import compiled_forward, cuda_step, session as run_session
from seratio.augment import augment_batch, to_float
from seratio.concurrent import train_concurrently
from seratio.config import RunConfig
from seratio.data import CifarData, Split
from seratio.models import build_model, kernel_parameters
from seratio.recipes import get_recipe
from seratio.session import (
    EVAL_BATCH, build_session, capturable, compiles, eager_step, optimizer_for, portable_optimizer_state, set_lr,
)
from seratio.train import _train_epoch, evaluate, train_run

STEPS, BATCH = 6, 16
# Loss tolerance over STEPS updates. channels_last convolutions sum in another order (~1e-7
# relative per op) and Adam amplifies that into lr-sized moves of near-zero-gradient weights; the
# measured gap after 6 steps is ~1e-4 relative, while the loss itself moves by 1e-1 per step.
LOSS_RTOL = 1e-3
LEARNED = 0.13
"""Test accuracy that shows a run of 8 steps (512 images, one epoch) learned: chance is 0.10, and on
1,000 stratified test images a network that learned nothing stays within 0.03 of it (three standard
errors). These runs reached 0.16-0.21."""


def _data(count: int) -> CifarData:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    empty = Split(images[:0], labels[:0])
    return CifarData(Split(images, labels), empty, empty, 10, [str(i) for i in range(10)], "synthetic", Path("."))


class _Recorder:
    """Stands in for the progress bar and reads the running loss sum after every step."""

    def __init__(self) -> None:
        self.sums: list[float] = []

    def start_epoch(self, epoch: int, steps: int) -> None:
        pass

    def advance(self, step: int, batch: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        self.sums.append(loss_sum.item())


def _plain_losses(config: RunConfig, data: CifarData) -> list[float]:
    """The textbook loop: NCHW, default Adam, same init, same batches and augmentation draws."""
    recipe = config.resolved_recipe()
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(10))
    kernels = kernel_parameters(model)
    ids = {id(p) for p in kernels}
    groups = [
        {"params": kernels, "weight_decay": recipe.weight_decay},
        {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.Adam(groups, lr=recipe.lr, eps=recipe.adam_eps)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(data.train), generator=generator)
    losses = []
    model.train()
    for step in range(STEPS):
        index = order[step * BATCH : (step + 1) * BATCH]
        images = to_float(augment_batch(data.train.images[index], generator))
        loss = F.cross_entropy(model(images), data.train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_optimized_cpu_step_follows_the_plain_loss_trajectory(compiled: bool) -> None:
    config = RunConfig(rr=(4, 2, 8), depth=8 if compiled else 14, batch_size=BATCH, device="cpu", seed=3)
    data = _data(STEPS * BATCH)
    session = build_session(config, data, torch.device("cpu"), compile_forward=compiled)
    assert session.channels_last and session.graphed is None
    assert (session.compiled is not None) == (session.compiled_eval is not None) == compiled
    recorder = _Recorder()
    _train_epoch(session, 0, recorder)  # type: ignore[arg-type]
    sums = [0.0, *recorder.sums]
    optimized = [(b - a) / BATCH for a, b in zip(sums, sums[1:], strict=False)]
    plain = _plain_losses(config, data)
    assert optimized == pytest.approx(plain, rel=LOSS_RTOL)
    assert plain[-1] != pytest.approx(plain[0], rel=1e-3)  # it did train: the comparison is not vacuous
    if compiled:
        _assert_compiled_evaluation_matches_eager(session)


def _assert_compiled_evaluation_matches_eager(session: Any) -> None:
    split = _data(2 * EVAL_BATCH["cpu"] + 7).train  # two compiled batches and an eager remainder
    compiled_loss, compiled_accuracy, compiled_predictions = evaluate(session, split)
    compiled_eval, session.compiled_eval = session.compiled_eval, None
    loss, accuracy, predictions = evaluate(session, split)
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    assert (compiled_predictions == predictions).float().mean() >= 0.99
    assert compiled_accuracy == pytest.approx(accuracy, abs=0.01)
    session.compiled_eval = compiled_eval
    compiled_tta = evaluate(session, split, "flip-shift")
    session.compiled_eval = None
    eager_tta = evaluate(session, split, "flip-shift")
    assert compiled_tta[0] == pytest.approx(eager_tta[0], rel=1e-5) and compiled_tta[0] != pytest.approx(loss, rel=1e-3)
    assert (compiled_tta[2] == eager_tta[2]).float().mean() >= 0.99


def _failing_compiler(message: str, attempts: list[int] | None = None) -> Any:
    """A stand-in for torch.compile whose compiled forward raises `message` when first called,
    noting each attempt's batch size."""

    def compile_(model: torch.nn.Module, **kwargs: Any) -> Any:
        def fail(images: torch.Tensor) -> torch.Tensor:
            if attempts is not None:
                attempts.append(images.shape[0])
            raise RuntimeError(message)

        return fail

    return compile_


def test_compiled_forward_falls_back_to_eager_when_compiling_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_forward.torch, "compile", _failing_compiler("no C++ compiler"))
    model = torch.nn.Linear(3, 2)
    forward = compiled_forward.CompiledForward(model, batch_size=4)
    said: list[str] = []
    forward.on_failure = said.append
    x = torch.rand(4, 3)
    assert torch.equal(forward(x), model(x)) and forward.compiled is None
    assert torch.equal(forward(x), model(x)) and forward.failure == "RuntimeError: no C++ compiler"
    assert said == ["RuntimeError: no C++ compiler"]  # the reason, once, for the session to log


def test_the_first_compiled_call_keeps_inductor_s_tf32_advice_out_of_the_run_s_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a GPU inductor advises TF32 matmuls while it compiles; the tool keeps them fp32 on purpose.
    Any other warning of the compile still reaches the user."""
    def warning_compiler(model: Any, **kwargs: Any) -> Any:
        def forward(images: torch.Tensor) -> torch.Tensor:
            warnings.warn(f"{compiled_forward.TF32_ADVICE}. Consider setting `torch.set_float32_matmul_precision`")
            warnings.warn("some other compile warning")
            return model(images)

        return forward

    monkeypatch.setattr(compiled_forward.torch, "compile", warning_compiler)
    forward = compiled_forward.CompiledForward(torch.nn.Linear(3, 2), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forward(torch.rand(4, 3))
    assert [str(w.message) for w in caught] == ["some other compile warning"]


def test_a_backward_that_fails_to_compile_falls_back_to_eager_instead_of_ending_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch compiles a training graph's backward at the first backward() unless told otherwise,
    which is outside the call that can fall back: a GPU's Triton or ptxas error there ended the run."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def broken_backward(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("ptxas failed on the backward")

    backend = aot_autograd(fw_compiler=lambda graph, inputs: make_boxed_func(graph.forward), bw_compiler=broken_backward)
    real_compile = torch.compile
    monkeypatch.setattr(compiled_forward.torch, "compile",
                        lambda model, **kwargs: real_compile(model, backend=backend, dynamic=False))
    model = torch.nn.Linear(3, 2)
    forward = compiled_forward.CompiledForward(model, batch_size=4)
    forward(torch.rand(4, 3)).sum().backward()
    assert forward.failure == "RuntimeError: ptxas failed on the backward" and forward.compiled is None
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0  # trained on, eagerly


def test_an_evaluation_compile_that_fails_leaves_training_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training already runs compiled kernels when evaluation's compile fails: switching it to eager
    mid-run would make a resumed run, which compiles training afresh, end differently."""
    model = torch.nn.Linear(3, 2)
    monkeypatch.setattr(compiled_forward.torch, "compile", lambda model, **kwargs: model)  # training's compiles
    training = compiled_forward.CompiledForward(model, 4)
    monkeypatch.setattr(compiled_forward.torch, "compile", _failing_compiler("eval graph unsupported"))
    evaluation = compiled_forward.CompiledForward(model, 8)
    fake = SimpleNamespace(compiled=training, compiled_eval=evaluation, device=torch.device("cpu"), autocast_dtype=None)
    said: list[str] = []
    run_session._warned(fake, said.append)
    training(torch.rand(4, 3))
    evaluation(torch.rand(8, 3))
    assert training.compiled is model and evaluation.compiled is None
    assert said[1:] == ["warning: torch.compile failed (RuntimeError: eval graph unsupported); its evaluation runs "
                        "uncompiled, slower; training stays compiled"]
    assert said[0].startswith("notice: this run compiles its training and evaluation forwards")


def test_a_wrapped_compile_error_is_told_by_its_reason_not_the_wrapper() -> None:
    """torch reports a backend's failure as "backend='inductor' raised:" with the reason below it."""
    def backend(graph: Any, inputs: Any) -> Any:
        raise ValueError("C++ compile error: cannot find Python.h\nfull compiler output follows")

    with pytest.raises(Exception) as caught:
        torch.compile(torch.nn.Linear(3, 2), backend=backend)(torch.rand(4, 3))
    wrapped = caught.value
    assert str(wrapped).splitlines()[0].endswith("raised:")  # what the first line alone would have said
    assert compiled_forward.compile_failure(wrapped) == "ValueError: C++ compile error: cannot find Python.h"
    assert compiled_forward.compile_failure(RuntimeError("\n\n")) == "RuntimeError"


def test_a_run_whose_compile_fails_says_so_and_still_trains(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training on uncompiled is the right fallback, but a silent one leaves a researcher with a run
    slower than the README says and no reason; the run's log must give it."""
    attempts: list[int] = []
    monkeypatch.setitem(run_session.COMPILE_MIN_IMAGES, "cpu", 0)
    monkeypatch.setattr(compiled_forward.torch, "compile",
                        _failing_compiler("InvalidCxxCompiler: no working C++ compiler found", attempts))
    said: list[str] = []
    config = RunConfig(rr=(4, 4, 4), depth=8, train_subset=512, test_subset=1000, val_size=0, epochs=1, batch_size=64,
                       data_dir=str(cifar_dir), device="cpu")
    result = train_run(config, tmp_path / "run", log=said.append)
    assert said[0] == ("notice: this run compiles its training and evaluation forwards with torch.compile in its "
                       "first steps, which takes a minute or two once per start and makes the epochs after it faster")
    failures = [line for line in said if "torch.compile failed" in line]
    # training's forward failed first; evaluation's is not tried again, and the run says it once
    assert failures == ["warning: torch.compile failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler "
                        "found); this run goes on uncompiled, slower"]
    assert attempts == [64]
    assert result["test_accuracy"] > LEARNED


def test_a_session_seeds_the_cpu_as_torch_manual_seed_does_and_no_other_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights drawn as under `torch.manual_seed`, so runs stay what they were; but every GPU's
    generator is not the run's to reseed, since `train_run` gives back only its own device's."""

    def every_gpu(seed: int) -> None:
        raise AssertionError("a session reseeded every GPU's generator")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", every_gpu)
    config = RunConfig(rr=(4, 2, 8), depth=8, batch_size=BATCH, device="cpu", seed=7)
    session = build_session(config, _data(BATCH), torch.device("cpu"), compile_forward=False)
    torch.random.default_generator.manual_seed(7)
    expected = build_model(config.model_config()).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in session.model.state_dict().items())


def test_only_runs_long_enough_to_repay_compiling_compile() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiles(get_recipe("paper"), 45_000, cpu)
    assert not compiles(get_recipe("paper", epochs=3), 2_000, cpu)
    # Work, not step count, decides: `fast` takes 9k large steps and compiles; 40 epochs of
    # batch-32 steps (1.8M images) compile too, and 5 epochs of `fast` (225k) do not.
    assert compiles(get_recipe("fast"), 45_000, cpu)
    assert compiles(get_recipe("paper", epochs=40), 45_000, cpu)
    assert not compiles(get_recipe("fast", epochs=5), 45_000, cpu)
    # On CUDA a step is 20-50x faster, so only runs of a paper run's length repay a compile of a
    # minute or more: the paper's 200 epochs do, with or without a validation split; `fast` does not.
    assert compiles(get_recipe("paper"), 50_000, cuda) and compiles(get_recipe("paper"), 45_000, cuda)
    assert not compiles(get_recipe("fast"), 45_000, cuda)
    assert not compiles(get_recipe("paper", epochs=40), 45_000, cuda)
    assert not compiles(get_recipe("paper", batch_size=128), 50_000, cuda)  # the gain is measured at 32 only
    assert compiles(get_recipe("paper", batch_size=128), 50_000, cpu)
    assert not compiles(get_recipe("paper"), 45_000, torch.device("meta"))  # no compile measured there


@pytest.mark.parametrize(("device", "recipe", "training", "evaluation"), [
    ("cuda", "paper", True, False), ("cpu", "paper", True, True), ("cuda", "fast", False, False),
])
def test_a_session_compiles_the_forwards_its_device_and_run_length_call_for(
    device: str, recipe: str, training: bool, evaluation: bool,
) -> None:
    """On CUDA a paper run compiles its training forward, which runs inside the CUDA graph, and
    evaluates eagerly in batches of 5,000, where a compile would not repay its minute; `fast`
    compiles nothing there. A CPU compiles both. Attaching compiles nothing yet, so the CUDA
    choice is checked here on a session that only says it is on CUDA."""
    model = build_model(RunConfig(rr=(4, 4, 4), depth=8).model_config())
    session = SimpleNamespace(recipe=get_recipe(recipe), data=SimpleNamespace(train=range(50_000)),
                              device=torch.device(device), model=model, compiled=None, compiled_eval=None)
    run_session.attach_compiled_forwards(session, None)
    assert (session.compiled is not None, session.compiled_eval is not None) == (training, evaluation)
    if training:
        assert session.compiled.model is model and session.compiled.batch_size == get_recipe(recipe).batch_size
    if evaluation:
        assert session.compiled_eval.batch_size == EVAL_BATCH["cpu"]


def test_every_run_in_a_process_compiles_however_many_came_before(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study worker trains trial after trial in one process. Dynamo caches at most
    `recompile_limit` graphs of `ResNet.forward` and then runs it eagerly without an error, so
    here the limit is one run's two graphs (training, evaluation) and the second run must still
    compile both of its own. The two runs differ only in their seed: the same graphs, so the second
    compile reads inductor's kernels from its cache, as a study's seeds do, while dynamo still
    compiles each run's own model."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setitem(run_session.COMPILE_MIN_IMAGES, "cpu", 0)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    base = dict(depth=8, train_subset=512, test_subset=1000, val_size=0, epochs=1, batch_size=64,
                data_dir=str(cifar_dir), device="cpu")
    for seed in (0, 1):
        before = counters["stats"]["unique_graphs"]
        result = train_run(RunConfig(rr=(4, 4, 4), seed=seed, **base), tmp_path / f"run{seed}")
        assert counters["stats"]["unique_graphs"] - before == 2, f"the run of seed {seed} did not compile"
        assert result["test_accuracy"] > LEARNED
        assert json.loads((tmp_path / f"run{seed}" / "config.json").read_text())["compiled"] is True


class _FakeCuda:
    """CPU stand-ins for the CUDA calls `GraphedStep` makes, faithful where it matters: capturing
    runs nothing (the step executed while recording is undone), and a replay re-runs the recorded
    step on the same static input tensors and writes into the same output tensors. A capture
    records on the current device's stream, so the fake insists that the step's device is current."""

    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        self.current: torch.device | None = None
        self.captures = 0
        self.recording: list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] | None = None

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = eager_step(self.session, images, labels)
        if self.recording is not None:
            self.recording.append((images, labels, out))
        return out

    @contextlib.contextmanager
    def current_device(self, device: torch.device) -> Iterator[None]:
        saved, self.current = self.current, device
        try:
            yield
        finally:
            self.current = saved

    @contextlib.contextmanager
    def graph(self, graph: _FakeGraph, stream: _FakeStream | None = None) -> Iterator[None]:
        assert self.current == self.device, f"captured with {self.current} current, the step runs on {self.device}"
        assert stream is not None, "captured on the process-wide default capture stream, not the step's own"
        model, optimizer = self.session.model, self.session.optimizer
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        state = copy.deepcopy(optimizer.state_dict())
        self.recording = []
        yield
        (images, labels, (loss, logits)), = self.recording
        self.recording = None
        model.load_state_dict(weights)
        optimizer.load_state_dict(state)
        self.captures += 1

        def replay() -> None:
            new_loss, new_logits = eager_step(self.session, images, labels)
            loss.copy_(new_loss)
            logits.copy_(new_logits)

        graph.replay = replay  # type: ignore[method-assign]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = cuda_step.torch.cuda
        monkeypatch.setattr(cuda, "CUDAGraph", _FakeGraph)
        monkeypatch.setattr(cuda, "graph", self.graph)
        monkeypatch.setattr(cuda, "device", self.current_device)
        monkeypatch.setattr(cuda, "Stream", lambda device=None: _FakeStream())
        monkeypatch.setattr(cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(cuda, "current_stream", lambda device=None: _FakeStream())
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)


class _FakeGraph:
    def replay(self) -> None:
        raise AssertionError("replayed before capture")


class _FakeStream:
    def wait_stream(self, other: Any) -> None:
        pass


def _session_and_batches(recipe: str) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Warm-up and capture batches, two replays, a partial batch (eager), two more replays; the
    optimizer built as on CUDA (tensor learning rate; Adam capturable, SGD fused)."""
    config = RunConfig(rr=(4, 4, 4), depth=8, recipe=recipe, batch_size=BATCH, device="cpu", seed=5)
    session = build_session(config, _data(BATCH), torch.device("cpu"))
    assert not capturable(session.optimizer)  # the CPU's own optimizer: steps stay eager
    session.optimizer = optimizer_for(session.model, session.recipe, torch.device("cpu"), for_graphs=True)
    assert capturable(session.optimizer)
    generator = torch.Generator().manual_seed(9)
    batches = []
    for size in [BATCH] * (cuda_step.WARMUP_STEPS + 3) + [BATCH // 2] + [BATCH] * 2:
        images = torch.rand(size, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
        batches.append((images, torch.randint(0, 10, (size,), generator=generator)))
    return session, batches


def _steps_at_changing_rates(session: Any, step: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Each step at its own learning rate, filled in before it as `fast`'s schedule does every step."""
    losses = []
    for index, (x, y) in enumerate(batches):
        set_lr(session.optimizer, session.recipe.lr * (index + 1) / len(batches))
        losses.append(step(x, y)[0].item())
    return losses


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_graphed_step_performs_exactly_the_eager_updates(recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eager_session, batches = _session_and_batches(recipe)
    eager = _steps_at_changing_rates(eager_session, functools.partial(eager_step, eager_session), batches)

    session, batches = _session_and_batches(recipe)
    second_gpu = torch.device("cuda", 1)  # not the default device: the capture must still record there
    fake = _FakeCuda(session, second_gpu)
    fake.install(monkeypatch)
    graphed_step = cuda_step.GraphedStep(fake.step, session.optimizer, BATCH, second_gpu)
    graphed = _steps_at_changing_rates(session, graphed_step, batches)

    assert fake.captures == 1 and graphed_step.eager_steps == cuda_step.WARMUP_STEPS
    assert graphed == eager
    for a, b in zip(session.model.state_dict().values(), eager_session.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_gpu_optimizer_state_resumes_on_cpu() -> None:
    """A checkpoint saved with GPU options (capturable, a tensor lr) and another implementation
    (foreach) loads into the CPU optimizer with the CPU's own options."""
    config = RunConfig(rr=(4, 4, 4), depth=8, batch_size=BATCH, device="cpu")
    session = build_session(config, _data(BATCH), torch.device("cpu"))
    x, y = torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    eager_step(session, x, y)
    saved = session.optimizer.state_dict()
    for group in saved["param_groups"]:
        group.update(fused=None, capturable=True, foreach=True, lr=torch.tensor(group["lr"]))
    restored = optimizer_for(session.model, session.recipe, torch.device("cpu"))
    restored.load_state_dict(portable_optimizer_state(restored, saved))
    for group in restored.param_groups:
        assert group["fused"] and not group["capturable"] and not group["foreach"]
        assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(session.recipe.lr)
    session.optimizer = restored
    eager_step(session, x, y)  # steps without complaining about capturable on a CPU


def test_concurrent_trials_equal_sequential_ones(cifar_dir: Path, tmp_path: Path) -> None:
    base = dict(depth=8, train_subset=256, test_subset=500, val_size=0, epochs=1, data_dir=str(cifar_dir), device="cpu")
    configs = [RunConfig(rr=(4, 4, 4), seed=0, **base), RunConfig(rr=(2, 8, 16), seed=1, **base)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = [train_run(c, tmp_path / f"seq{i}") for i, c in enumerate(configs)]
    finally:
        torch.set_num_threads(threads)
    concurrent = train_concurrently([(c, tmp_path / f"con{i}") for i, c in enumerate(configs)], 2, threads=1)
    for i, (a, b) in enumerate(zip(sequential, concurrent, strict=True)):
        keep = ("test_accuracy", "test_loss", "train_loss", "confusion_matrix", "per_class_accuracy")
        assert {k: a[k] for k in keep} == {k: b[k] for k in keep}
        rows = [json.loads(line) for line in (tmp_path / f"con{i}" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["train_loss"] == a["train_loss"]
