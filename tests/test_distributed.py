"""Data-parallel training and sharded evaluation on 2 CPU processes (gloo) equal the
single-process run with the same seed."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robustlab.attacks import PGD
from robustlab.runtime import distributed

# A global batch of 45 splits 23/22 over 2 ranks: the uneven shards must be weighted exactly.
CFG = {"epochs": 2, "batch_size": 45, "lr": 0.05, "sam_rho": 0.05, "ema_decay": 0.9, "seed": 3}
N_TRAIN, N_EVAL = 180, 70


def _data():
    from robustlab.data import load_dataset

    data = load_dataset("digits", "train")
    return data.head(N_TRAIN), load_dataset("digits", "test").head(N_EVAL)


class CountingPGD(PGD):
    """PGD that counts the points it is asked to attack in this process."""

    points = 0

    def run(self, model, x, y, target=None):
        self.points += len(x)
        return super().run(model, x, y, target)


def _train_and_evaluate():
    """Train (standard CE, SAM, EMA) and evaluate (seeded PGD, two batches per rank)."""
    from robustlab.errors import RobustlabError
    from robustlab.evaluation import evaluate
    from robustlab.models import build_model
    from robustlab.training.early_stopping import split_accuracy
    from robustlab.training.methods import METHODS
    from robustlab.training.trainer import TrainConfig, Trainer

    train, test = _data()
    torch.manual_seed(distributed.rank())  # different inits per rank: rank 0's is broadcast
    model = build_model("mlp", input_shape=train.input_shape, num_classes=10, hidden=(32,))
    trainer = Trainer(model, METHODS.build("standard"), train, TrainConfig(**CFG), progress=False)
    history = trainer.fit()
    attack = PGD("linf:0.1", steps=5, seed=1)
    split = split_accuracy(model, test, attack, batch_size=16)
    counting = CountingPGD("linf:0.1", steps=5, seed=1)
    result = evaluate(model, test, [counting], batch_size=16, seed=1, progress=False, checks=False)
    try:  # 46 samples in batches of 45 leave a last batch of 1: not splittable over 2 ranks
        Trainer(model, METHODS.build("standard"), train.head(46), TrainConfig(batch_size=45))
        refused = False
    except RobustlabError:
        refused = True
    return {
        "refused": refused,
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
        "ema": torch.cat([p.flatten() for p in trainer.ema.module.parameters()]),
        "loss": [r["train_loss"] for r in history],
        "split": (split.clean, split.robust),
        "evaluate": (
            result.clean_accuracy,
            result.attacks[0].robust_accuracy,
            result.attacks[0].forward_passes,
        ),
        "attacked_here": counting.points,
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        result = _train_and_evaluate()
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_helpers_are_identities_in_one_process():
    idx = torch.arange(7)
    assert not distributed.is_distributed() and distributed.world_size() == 1
    assert torch.equal(distributed.shard(idx), idx)
    assert distributed.owned_batches(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert distributed.reduce_sums({"a": 1.5}) == {"a": 1.5}


def test_two_gloo_processes_equal_one_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    single = _train_and_evaluate()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in ranks:
        torch.testing.assert_close(res["weights"], single["weights"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["ema"], single["ema"], rtol=1e-5, atol=1e-6)
        assert res["loss"] == pytest.approx(single["loss"], rel=1e-5)
        # Sharded evaluation keeps the single-process batches: the same result, gathered once.
        assert res["split"] == single["split"]
        assert res["evaluate"] == single["evaluate"]
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    # 70 points in batches of 16: rank 0 attacks batches 0, 2, 4 (38 points), rank 1 the rest.
    assert [r["attacked_here"] for r in ranks] == [38, 32] and single["attacked_here"] == N_EVAL
    assert ranks[0]["refused"] and ranks[1]["refused"] and not single["refused"]
