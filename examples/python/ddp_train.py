"""Data-parallel reward-model training with rewardkit inside torch.distributed.

    torchrun --nproc_per_node 2 examples/python/ddp_train.py --model DIR --data FILE \
        --steps N --batch-pairs B --out OUT
    python examples/python/ddp_train.py --model DIR --data FILE --steps N --batch-pairs B --out OUT

Rank r at step s trains on pairs [(s*W + r)*B, (s*W + r + 1)*B) of the file's usable pairs in file
order (no shuffle, no dropout), so one process with --batch-pairs W*B sees the union of what W
ranks see and ends with the same weights (to float rounding). rewardkit ships no collective
layer: each optimizer step hands this script one flat float32 gradient buffer, which
torch.distributed averages in place (gloo on the CPU, NCCL when the model is on CUDA). Rank 0's
trained weights are broadcast first, so every rank starts identical; every rank saves a normal
rewardkit checkpoint to OUT/rank-<r>/ and the weight checksums are compared at the end.

Run as plain `python` (world size 1), torch is not needed.
"""
import argparse
import os
import sys

import numpy as np

import rewardkit


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="reward model directory")
    ap.add_argument("--data", required=True, help="preference pairs, JSONL(.gz)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-pairs", type=int, required=True, help="pairs per rank per step")
    ap.add_argument("--out", required=True, help="checkpoints go to OUT/rank-<r>/")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--trainable", default="head", help="all, head, or top:N")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (rank r uses cuda:<local rank>)")
    ap.add_argument("--threads", type=int, default=0, help="worker threads per rank (0: the cores)")
    return ap.parse_args(argv)


def train_rank(args, rank, world, device="cpu", allreduce=None, broadcast=None, log=print):
    """One rank's loop: the part that does not depend on the collective library.

    `allreduce(buf, info)` averages the flat gradient over ranks in place (see
    rewardkit.Trainer.set_allreduce); `broadcast(weights)` replaces the flat weights with rank
    0's in place. Both are None at world size 1. Returns the final weights checksum."""
    pairs = rewardkit.read_pairs(args.data)
    b = args.batch_pairs
    if len(pairs) < args.steps * world * b:
        raise SystemExit(f"{args.data}: {len(pairs)} usable pairs, {args.steps} steps x {world} ranks x {b} need {args.steps * world * b}")

    trainable = {"all": {"trainable": "all"}, "head": {"trainable": "head"}}.get(args.trainable)
    if trainable is None:
        trainable = {"trainable": "top_layers", "top_layers": int(args.trainable.split(":")[1])}
    model = rewardkit.Model(args.model, device=device, n_threads=args.threads)
    trainer = rewardkit.Trainer(model, lr=args.lr, schedule="constant", **trainable)

    if world > 1:
        # Start identical: rank 0's trained weights, everywhere.
        w = trainer.weights()
        broadcast(w)
        trainer.set_weights(w)
        trainer.set_allreduce(allreduce, rank, world)

    for s in range(args.steps):
        lo = (s * world + rank) * b
        batch = pairs[lo:lo + b]
        st = trainer.step([p for p, _, _ in batch], [c for _, c, _ in batch], [r for _, _, r in batch])
        # loss and accuracy are this rank's (local); grad_norm is of the averaged gradient.
        log(f"rank {rank} step {st['step']} loss {st['loss']:.4f} accuracy {st['accuracy']:.2f} "
            f"grad_norm {st['grad_norm']:.4f} local_grad_norm {st['local_grad_norm']:.4f}")

    trainer.save(os.path.join(args.out, f"rank-{rank}"))
    checksum = model.weights_checksum()
    log(f"rank {rank} checksum {checksum:016x}")
    return checksum


def main():
    args = parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local_rank}" if args.device.startswith("cuda") else "cpu"
    log = lambda line: print(line, flush=True)  # noqa: E731
    if world == 1:
        train_rank(args, 0, 1, device, log=log)
        return

    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if device != "cpu" else "gloo")

    def broadcast(weights):
        w = torch.from_numpy(weights)  # shares the numpy buffer
        if device != "cpu":
            w = w.to(device)
        dist.broadcast(w, src=0)
        weights[:] = w.cpu().numpy()

    def allreduce(buf, info):
        if isinstance(buf, np.ndarray):
            t = torch.from_numpy(buf)  # shares the buffer: no copy
        else:
            t = torch.as_tensor(buf, device=f"cuda:{buf.device_index}")  # device view, no copy
        dist.all_reduce(t)
        t /= info["world_size"]
        if t.is_cuda:
            torch.cuda.synchronize(t.device)

    checksum = train_rank(args, rank, world, device, allreduce, broadcast, log)
    sums = [None] * world
    dist.all_gather_object(sums, checksum)
    if rank == 0:
        log("ranks identical: " + ("yes" if len(set(sums)) == 1 else "NO"))
    dist.destroy_process_group()
    if len(set(sums)) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
