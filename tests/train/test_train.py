"""The training loop on real data and models: reported metrics, learning, exact resume, forced
NaN, every stochastic-depth method, the LR schedule and weight-decay groups, and DDP on gloo."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from sd_tune import build_model
from sd_tune.config import EPOCH_METRICS, FINAL_METRICS, TrialConfig
from sd_tune.data import DEBIAN_FASHION_MNIST, InMemorySplit, load_splits
from sd_tune.train import (
    CHECKPOINT_FILE,
    TIMING_METRICS,
    build_optimizer,
    build_scheduler,
    ddp_kwargs,
    load_checkpoint,
    lr_factor,
    param_groups,
    run_trial,
    stochastic_depth_from_config,
)

HAS_FMNIST = all(
    (DEBIAN_FASHION_MNIST / f"{n}-idx{d}-ubyte.gz").is_file()
    for n, d in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1))
)
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason=f"Fashion-MNIST not in {DEBIAN_FASHION_MNIST}"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these runs are tiny and the machine may be shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**train: object) -> TrialConfig:
    """cifar_resnet8 on 256 synthetic 3x32x32 images, batch 32, 2 epochs."""
    cfg = TrialConfig()
    cfg.dataset.name = "synthetic"
    cfg.dataset.max_train_samples = 256
    cfg.dataset.max_eval_samples = 64
    cfg.model.depth = 8
    cfg.train.epochs = 2
    cfg.train.batch_size = 32
    cfg.stochastic_depth.drop_rate = 0.3
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


class Recorder:
    """A ``report`` that keeps every metrics dict and a copy of every checkpoint folder;
    ``stop_after=N`` raises after the N-th report (a worker dying after its checkpoint)."""

    class Stop(Exception):
        pass

    def __init__(self, root: Path, stop_after: int | None = None) -> None:
        self.root, self.stop_after = root, stop_after
        self.metrics: list[dict[str, float]] = []
        self.dirs: list[Path] = []

    def __call__(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        assert checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_FILE).is_file()
        kept = self.root / f"epoch{len(self.metrics) + 1}"
        shutil.copytree(checkpoint_dir, kept)
        self.metrics.append(metrics)
        self.dirs.append(kept)
        if self.stop_after is not None and len(self.metrics) >= self.stop_after:
            raise Recorder.Stop


def test_reports_every_metric_every_epoch(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    lines: list[str] = []
    out = run_trial(tiny_cfg(epochs=3), rec, log=lines.append)
    assert [m["epoch"] for m in rec.metrics] == [1, 2, 3]
    for i, m in enumerate(rec.metrics):
        final = i == len(rec.metrics) - 1
        expected = set(EPOCH_METRICS) | {"param_checksum"}
        assert set(m) == expected | (set(FINAL_METRICS) if final else set())
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values()), m
        assert 0 <= m["val_acc"] <= m["val_acc5"] <= 1 and 0 <= m["train_acc"] <= 1
        assert 0 < m["train_time_s"] < m["wall_time_s"] and m["images_per_s"] > 0
        assert 0 < m["expected_depth"] < 3  # cifar_resnet8: 3 blocks, drop_rate 0.3
    times = [m["train_time_s"] for m in rec.metrics]
    walls = [m["wall_time_s"] for m in rec.metrics]
    assert times == sorted(times) and walls == sorted(walls) and len(set(times)) == 3
    assert out == rec.metrics[-1]
    assert not any(Path(d).name.startswith("sd_tune_ckpt") for d in rec.dirs)
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3") and "test_" not in lines[0]
    assert "test_loss" in lines[-1]
    state = load_checkpoint(rec.dirs[-1])
    assert state["epoch"] == 3 and state["metrics"] == rec.metrics[-1]
    assert state["config"]["model"]["depth"] == 8


def _fmnist_cfg() -> TrialConfig:
    cfg = TrialConfig()  # fashion_mnist, drop_rate 0.1
    cfg.dataset.max_train_samples = 2000
    cfg.dataset.max_eval_samples = 500
    cfg.model.depth = 8
    cfg.train.epochs = 2
    cfg.train.batch_size = 32
    cfg.train.warmup_epochs = 0.2
    return cfg


@pytest.mark.slow  # ~10 s of training: CI runs it, the quick loop does not
@needs_fmnist
def test_learns_fashion_mnist_and_not_shuffled_labels(tmp_path: Path) -> None:
    cfg = _fmnist_cfg()
    real = Recorder(tmp_path / "real")
    run_trial(cfg, real, log=lambda _: None)
    first, last = real.metrics[0], real.metrics[-1]
    assert last["train_loss"] < first["train_loss"] < math.log(10)
    assert last["val_acc"] > 0.5 and last["test_acc"] > 0.5  # chance is 0.1; about 0.68 here

    d = cfg.dataset
    splits = load_splits(
        d.name, max_train_samples=d.max_train_samples, max_eval_samples=d.max_eval_samples
    )
    rng = np.random.default_rng(0)
    shuffled = torch.from_numpy(rng.permutation(splits.train.y.numpy()))
    splits.train = InMemorySplit(splits.train.x, shuffled)
    noise = Recorder(tmp_path / "shuffled")
    run_trial(cfg, noise, log=lambda _: None, splits=splits)
    assert noise.metrics[-1]["val_acc"] < 0.25
    assert noise.metrics[-1]["train_loss"] > last["train_loss"] + 0.5


def test_resume_is_exact(tmp_path: Path) -> None:
    cfg = tiny_cfg(deterministic=True)
    cfg.stochastic_depth.drop_warmup = 0.3  # the rates change along the run
    full = Recorder(tmp_path / "full")
    run_trial(cfg, full, log=lambda _: None)

    cut = Recorder(tmp_path / "cut", stop_after=1)
    with pytest.raises(Recorder.Stop):
        run_trial(cfg, cut, log=lambda _: None)
    resumed = Recorder(tmp_path / "resumed")
    lines: list[str] = []
    run_trial(cfg, resumed, resume_dir=str(cut.dirs[0]), log=lines.append)
    assert lines[0].startswith("resuming from") and "changed" not in lines[0]

    assert [m["epoch"] for m in resumed.metrics] == [2]
    a, b = full.metrics[-1], resumed.metrics[-1]
    assert set(a) == set(b)
    for key in a:
        if key not in TIMING_METRICS:
            assert a[key] == b[key], key
    assert b["wall_time_s"] > cut.metrics[0]["wall_time_s"]
    assert b["train_time_s"] > cut.metrics[0]["train_time_s"]
    sa, sb = load_checkpoint(full.dirs[-1]), load_checkpoint(resumed.dirs[-1])
    for key, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][key]), key
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == sb["total_steps"]
    for group_a, group_b in zip(
        sa["optimizer"]["param_groups"], sb["optimizer"]["param_groups"], strict=True
    ):
        assert group_a == group_b
    for key, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][key]["momentum_buffer"])

    # Resuming from the last checkpoint has nothing left to do.
    assert run_trial(cfg, resumed, resume_dir=full.dirs[-1], log=lambda _: None) == a


def test_forced_nan_stops_with_epoch_and_step(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite training loss \(nan\) at epoch 2, "
        r"step 1 .*fail_at_epoch=2",
    ):
        run_trial(tiny_cfg(fail_at_epoch=2), rec, log=lambda _: None)
    assert [m["epoch"] for m in rec.metrics] == [1]


@pytest.mark.parametrize("every", [1, 3, 50])
def test_nan_is_named_at_its_step_and_stops_within_the_check_interval(
    tmp_path: Path, every: int
) -> None:
    """The loop reads the device every ``nan_check_every`` steps: the error still names the
    first non-finite step (epoch 2, step 1: global step 9 of 8-step epochs), training stops
    within that many steps (or at the epoch's end), and the checkpoint reported last holds
    finite weights."""
    rec = Recorder(tmp_path)
    with pytest.raises(FloatingPointError) as err:
        run_trial(tiny_cfg(fail_at_epoch=2, nan_check_every=every), rec, log=lambda _: None)
    message = str(err.value)
    assert "at epoch 2, step 1 (of 8 in the epoch; global step 9," in message
    stopped = int(message.split("seen at the check after global step ")[1].split(")")[0])
    assert 9 <= stopped < 9 + min(every, 8), message
    assert [m["epoch"] for m in rec.metrics] == [1]
    weights = load_checkpoint(rec.dirs[-1])["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_compile_auto_is_eager_on_cpu(tmp_path: Path) -> None:
    torch._dynamo.utils.counters.clear()
    rec = Recorder(tmp_path)
    out = run_trial(tiny_cfg(epochs=1), rec, log=lambda _: None, device="cpu")
    assert TrialConfig().train.compile == "auto"
    assert out["compile_time_s"] == 0.0
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compile_true_on_cpu_trains_reports_compile_time_and_resumes(tmp_path: Path) -> None:
    """``train.compile: true`` compiles on the CPU too: compile time is reported apart from
    training time, and the checkpoint (no compiled-module key prefixes) resumes."""
    torch._dynamo.reset()
    cfg = tiny_cfg(epochs=2, compile=True)
    rec = Recorder(tmp_path / "a", stop_after=1)
    with pytest.raises(Recorder.Stop):
        run_trial(cfg, rec, log=lambda _: None)
    first = rec.metrics[0]
    assert first["compile_time_s"] > 0
    assert first["wall_time_s"] > first["train_time_s"] + first["compile_time_s"]
    keys = load_checkpoint(rec.dirs[0])["model"]
    assert not any(k.startswith(("_orig_mod", "module.")) for k in keys)
    resumed = Recorder(tmp_path / "b")
    out = run_trial(cfg, resumed, resume_dir=rec.dirs[0], log=lambda _: None)
    assert out["epoch"] == 2.0 and math.isfinite(out["val_loss"])
    assert out["compile_time_s"] >= first["compile_time_s"]


@pytest.mark.parametrize(
    ("method", "impl"), [("sample", "mask"), ("sample", "subset"), ("block", "mask")]
)
def test_every_method_trains(tmp_path: Path, method: str, impl: str) -> None:
    cfg = tiny_cfg(epochs=1)
    sd = cfg.stochastic_depth
    sd.method, sd.sample_impl, sd.drop_rate, sd.drop_warmup = method, impl, 0.5, 0.5
    sd.drop_distribution = "linear"
    rec = Recorder(tmp_path)
    out = run_trial(cfg, rec, log=lambda _: None)
    # After warmup the 3 blocks have rates 1/6, 2/6, 3/6: expected depth 3 - 1 = 2.
    assert out["expected_depth"] == pytest.approx(2.0)
    assert math.isfinite(out["train_loss"])


def test_max_steps_per_epoch_caps_the_schedule(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    run_trial(tiny_cfg(epochs=1, max_steps_per_epoch=3, warmup_epochs=0.0), rec, log=lambda _: None)
    state = load_checkpoint(rec.dirs[0])
    assert state["global_step"] == state["total_steps"] == 3
    assert rec.metrics[0]["lr"] == pytest.approx(0.1 * lr_factor(2, 3, 0))


def test_lr_warmup_then_cosine() -> None:
    total, warmup = 110, 10
    assert lr_factor(0, total, warmup) == pytest.approx(0.1)
    assert lr_factor(4, total, warmup) == pytest.approx(0.5)
    assert lr_factor(9, total, warmup) == 1.0 == lr_factor(10, total, warmup)
    assert lr_factor(60, total, warmup) == pytest.approx(0.5)
    assert lr_factor(85, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(110, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(3, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    assert lr_factor(0, 4, 4) == 0.25 and lr_factor(3, 4, 4) == 1.0

    model = build_model("cifar_resnet8", 10)
    opt = build_optimizer(model, TrialConfig().train)
    sched = build_scheduler(opt, total, warmup)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == used[-1]
        opt.step()
        sched.step()
    assert used[0] == pytest.approx(0.01) and max(used) == pytest.approx(0.1)
    assert used[9] == pytest.approx(0.1) and used[60] == pytest.approx(0.05)
    assert all(a <= b for a, b in itertools.pairwise(used[:10]))
    assert all(a >= b for a, b in itertools.pairwise(used[10:])) and used[-1] > 0


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    cfg = TrialConfig()
    model = stochastic_depth_from_config(cfg).apply(build_model("cifar_resnet8", 10))
    opt = build_optimizer(model, cfg.train)
    decay, no_decay = opt.param_groups
    assert decay["name"] == "decay" and decay["weight_decay"] == cfg.train.weight_decay
    assert no_decay["name"] == "no_decay" and no_decay["weight_decay"] == 0.0
    assert decay["nesterov"] and decay["momentum"] == cfg.train.momentum
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in decay["params"]}
    not_decayed = {by_id[id(p)] for p in no_decay["params"]}
    assert decayed | not_decayed == set(by_id.values()) and not decayed & not_decayed
    assert all(n.endswith("weight") and ("conv" in n or n == "fc.weight") for n in decayed)
    assert "fc.bias" in not_decayed and "bn1.weight" in not_decayed
    assert all(".bn" in n or n.startswith("bn") or n.endswith("bias") for n in not_decayed)
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [len(decayed), len(not_decayed)]


def test_ddp_kwargs_follow_the_method() -> None:
    cfg = TrialConfig()
    assert ddp_kwargs(stochastic_depth_from_config(cfg)) == {"find_unused_parameters": False}
    cfg.stochastic_depth.method = "block"
    assert ddp_kwargs(stochastic_depth_from_config(cfg)) == {"find_unused_parameters": True}


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for method in ("sample", "block"):  # block needs find_unused_parameters=True
            cfg = tiny_cfg(epochs=2)
            cfg.stochastic_depth.method = method
            out = Path(out_dir) / method
            calls: list[tuple[dict[str, float], bool]] = []

            def report(
                metrics: dict[str, float],
                checkpoint_dir: str | None,
                calls: list = calls,
                out: Path = out,
            ) -> None:
                if checkpoint_dir is not None:
                    shutil.copytree(checkpoint_dir, out / f"ckpt{len(calls) + 1}")
                calls.append((metrics, checkpoint_dir is not None))

            run_trial(cfg, report, log=lambda _: None)
            out.mkdir(exist_ok=True)
            (out / f"rank{rank}.json").write_text(json.dumps(calls))
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_report_in_step(tmp_path: Path, run_two_ranks: Callable[..., None]) -> None:
    run_two_ranks(_ddp_worker, str(tmp_path / "init"), str(tmp_path))
    for method in ("sample", "block"):
        out = tmp_path / method
        r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
        assert [has for _, has in r0] == [True, True]  # only rank 0 passes a checkpoint
        assert [has for _, has in r1] == [False, False]
        for (m0, _), (m1, _) in zip(r0, r1, strict=True):
            assert set(m0) == set(m1)
            for key in m0:
                if key not in TIMING_METRICS:
                    assert m0[key] == pytest.approx(m1[key], rel=1e-12), (method, key)
        # 256 training images over 2 ranks at 32 per rank: 4 steps of 64 images per epoch.
        state = load_checkpoint(out / "ckpt2")
        assert state["global_step"] == 8 and len(state["rng"]) == 2


def test_replay_reports_past_epochs_of_a_resumed_run(tmp_path: Path) -> None:
    """A restored Tune trial lost its results: ``replay`` reports the checkpoint's epochs
    again (without checkpoints) before going on; without it, nothing is reported twice."""
    first = Recorder(tmp_path / "first", stop_after=1)
    with pytest.raises(Recorder.Stop):
        run_trial(tiny_cfg(epochs=2), first, log=lambda _: None)
    seen: list[tuple[dict[str, float], str | None]] = []

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        seen.append((metrics, checkpoint_dir))

    run_trial(tiny_cfg(epochs=2), report, resume_dir=first.dirs[0], replay=True, log=lambda _: None)
    assert [m["epoch"] for m, _ in seen] == [1, 2]
    assert seen[0][0] == first.metrics[0] and seen[0][1] is None  # the same numbers, replayed
    assert seen[1][1] is not None  # epoch 2 is trained and checkpointed
    again: list[dict[str, float]] = []
    last = Recorder(tmp_path / "last")
    run_trial(tiny_cfg(epochs=2), last, log=lambda _: None)
    run_trial(
        tiny_cfg(epochs=2),
        lambda m, c: again.append(m),
        resume_dir=last.dirs[-1],
        replay=True,
        log=lambda _: None,
    )
    assert again == last.metrics  # finished run: every epoch replayed, nothing trained
    quiet: list[dict[str, float]] = []
    run_trial(
        tiny_cfg(epochs=2),
        lambda m, c: quiet.append(m),
        resume_dir=last.dirs[-1],
        log=lambda _: None,
    )
    assert quiet == []


class _Planted:
    """Unpickling this creates ``marker``: what a planted checkpoint would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted"
    planted.mkdir()
    for fmt in (1, 2):  # sd-tune's old format and its current one
        torch.save(
            {"format": fmt, "epoch": 1, "config": _Planted(str(marker))}, planted / CHECKPOINT_FILE
        )
        with pytest.raises(
            ValueError,
            match=r"is not a checkpoint sd-tune can load: sd-tune "
            r"reads only tensors and plain data",
        ):
            load_checkpoint(planted)
        with pytest.raises(ValueError, match="is not a checkpoint sd-tune can load"):
            run_trial(tiny_cfg(epochs=2), lambda m, c: None, resume_dir=planted, log=lambda _: None)
        assert not marker.exists()


def test_a_checkpoint_of_the_old_format_gets_a_clear_message(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "real")
    run_trial(tiny_cfg(epochs=1), rec, log=lambda _: None)
    state = torch.load(rec.dirs[0] / CHECKPOINT_FILE, weights_only=True)
    state["format"] = 1
    state["rng"] = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state()}]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(
        ValueError,
        match=r"older than checkpoint format 2, or not by sd-tune: "
        r"train the run again under a new name",
    ):
        load_checkpoint(tmp_path / "old.pt")
