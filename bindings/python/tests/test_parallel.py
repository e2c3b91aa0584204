"""Data parallelism from Python: two processes run examples/python/ddp_train.py's rank loop with
an all-reduce over shared memory (torch is not needed), and must end bitwise identical and equal
to one process trained on the union batch (the example run as plain `python`)."""
import importlib.util
import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest

import rewardkit

from conftest import REPO

DATA = os.path.join(REPO, "data", "hh-rlhf", "harmless-base-test.jsonl.gz")
EXAMPLE = os.path.join(REPO, "examples", "python", "ddp_train.py")


def _example():
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class SharedMemoryCollective:
    """A two-barrier all-reduce over one shared float array: every rank writes its slot, then
    every rank sums all slots in rank order, so all ranks get the same bits."""

    def __init__(self, ctx, world, capacity):
        self.world, self.capacity = world, capacity
        self.slots = ctx.RawArray("f", world * capacity)
        self.barrier = ctx.Barrier(world, timeout=120)

    def _view(self):
        return np.frombuffer(self.slots, dtype=np.float32).reshape(self.world, self.capacity)

    def allreduce(self, rank, buf, fail_at_step=None, step=None):
        n = buf.size
        assert n <= self.capacity
        slots = self._view()
        slots[rank, :n] = buf
        self.barrier.wait()
        total = slots[0, :n].copy()
        for r in range(1, self.world):
            total += slots[r, :n]
        self.barrier.wait()  # nobody overwrites a slot before every rank has read it
        buf[:] = total / np.float32(self.world)

    def broadcast(self, rank, weights):
        slots = self._view()
        if rank == 0:
            slots[0, :weights.size] = weights
        self.barrier.wait()
        weights[:] = slots[0, :weights.size]
        self.barrier.wait()


def _rank_main(rank, world, args, collective, results):
    try:
        ddp = _example()
        hook = lambda buf, info: collective.allreduce(rank, buf)  # noqa: E731
        bcast = lambda w: collective.broadcast(rank, w)  # noqa: E731
        checksum = ddp.train_rank(args, rank, world, "cpu", hook, bcast, log=lambda _line: None)
        results[rank] = checksum
    except BaseException as e:  # noqa: BLE001 - reported through the exit code
        print(f"rank {rank}: {e!r}", file=sys.stderr, flush=True)
        collective.barrier.abort()
        os._exit(1)


def _trained_weights(checkpoint, trainable):
    model = rewardkit.Model(checkpoint, n_threads=1)
    trainer = rewardkit.Trainer(model, lr=1e-4, **trainable)
    return trainer.weights()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_two_processes_match_one_process_on_the_union_batch(model_dir, tmp_path):
    ddp = _example()
    steps, b, world = 3, 2, 2
    common = ["--model", model_dir, "--data", DATA, "--steps", str(steps), "--trainable", "top:1", "--lr", "1e-3", "--threads", "1"]

    # One process, W*B pairs per step: the example as plain `python` (world size 1).
    union_out = tmp_path / "union"
    subprocess.run([sys.executable, EXAMPLE, *common, "--batch-pairs", str(world * b), "--out", str(union_out)], check=True,
                   env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"})

    # Two processes, B pairs each. The parent starts no rewardkit threads before forking.
    ctx = mp.get_context("fork")
    capacity = os.path.getsize(os.path.join(model_dir, "model.safetensors")) // 4
    collective = SharedMemoryCollective(ctx, world, capacity)
    results = ctx.Array("Q", world)
    par_out = tmp_path / "parallel"
    args = ddp.parse_args([*common, "--batch-pairs", str(b), "--out", str(par_out)])
    procs = [ctx.Process(target=_rank_main, args=(r, world, args, collective, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"rank process exited with {p.exitcode}"

    assert results[0] == results[1], "ranks' weights differ"
    trainable = {"trainable": "top_layers", "top_layers": 1}
    w0 = _trained_weights(str(par_out / "rank-0"), trainable)
    w1 = _trained_weights(str(par_out / "rank-1"), trainable)
    assert np.array_equal(w0, w1)
    ref = _trained_weights(str(union_out / "rank-0"), trainable)
    start = _trained_weights(model_dir, trainable)
    assert not np.array_equal(ref, start), "training changed nothing"
    rel = np.linalg.norm(w0 - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, f"parallel vs union batch: relative difference {rel:.3e}"


def test_a_failing_hook_fails_the_step_and_changes_nothing(model_dir):
    pairs = rewardkit.read_pairs(DATA)[:2]
    model = rewardkit.Model(model_dir, n_threads=1)
    trainer = rewardkit.Trainer(model, lr=1e-3, trainable="head")
    before = trainer.weights()

    class HostError(RuntimeError):
        pass

    def allreduce(buf, info):
        assert info["sync_point"] == "gradient" and info["world_size"] == 2
        buf[:] = np.nan  # a half-done reduction must not leak into the weights
        raise HostError("rank 1 is gone")

    trainer.set_allreduce(allreduce, 0, 2)
    with pytest.raises(HostError, match="rank 1 is gone"):
        trainer.step([p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])
    assert np.array_equal(trainer.weights(), before)

    # Leaving the run makes the trainer a plain single-process trainer again.
    trainer.set_allreduce(None, 0, 1)
    st = trainer.step([p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])
    assert st["applied"] and not np.array_equal(trainer.weights(), before)


def test_pull_style_gradients_round_trip(model_dir):
    pairs = rewardkit.read_pairs(DATA)[:2]
    model = rewardkit.Model(model_dir, n_threads=1)
    trainer = rewardkit.Trainer(model, lr=1e-3, trainable="head", defer_apply=True)
    before = trainer.weights()
    st = trainer.step([p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])
    assert st["pending"] and not st["applied"]
    assert np.array_equal(trainer.weights(), before)
    g = trainer.gradients()
    assert g.size == trainer.trained_size() and np.isfinite(g).all() and np.abs(g).sum() > 0
    with pytest.raises(rewardkit.RewardkitError):
        trainer.set_gradients(g[:-1])  # wrong length: refused
    with pytest.raises(rewardkit.RewardkitError):
        bad = g.copy()
        bad[0] = np.inf
        trainer.set_gradients(bad)  # non-finite: refused
    trainer.set_gradients(g * 0.5)
    st = trainer.apply()
    assert st["applied"] and not np.array_equal(trainer.weights(), before)
