"""train/parallel.py in one process: mode resolution and its errors, FSDP on a single process, and full state
that moves between a plain model and an FSDP-sharded one by parameter name."""

from __future__ import annotations

import copy

import pytest
import torch

from core.device import resolve_device
from core.errors import ConfigError
from model import Transformer
from model.config import ModelConfig
from train.config import Config
from train.optim import build_optimizer
from train.parallel import (
    Plan,
    World,
    apply_parallelism,
    close_world,
    full_model_state,
    full_optimizer_state,
    init_world,
    load_full_model_state,
    load_full_optimizer_state,
    resolve_parallel,
    resolve_precision,
)
from train.trainer import train

from .conftest import losses, tiny_config

ONE, TWO = World(), World(rank=1, local_rank=1, world_size=2)


def test_resolve_parallel():
    assert resolve_parallel("auto", ONE) == "none" and resolve_parallel("auto", TWO) == "ddp"
    assert resolve_parallel("ddp", ONE) == "none"  # DDP of one process is the plain model
    assert resolve_parallel("fsdp", ONE) == "fsdp" and resolve_parallel("fsdp", TWO) == "fsdp"
    with pytest.raises(ConfigError, match=r"train\.parallel=none but 2 processes were launched"):
        resolve_parallel("none", TWO)


def test_none_with_several_processes_fails_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"train\.parallel=none"):
        init_world("cpu", "none")
    assert not torch.distributed.is_initialized()


def test_each_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", "train.device", TWO.local_rank, TWO.world_size) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", "train.device", ONE.local_rank, ONE.world_size) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"train\.device=cuda:1 would put all 2 processes on one GPU"):
        resolve_device("cuda:1", "train.device", TWO.local_rank, TWO.world_size)


def test_fp16_is_refused_under_fsdp():
    with pytest.raises(ConfigError, match=r"fp16 is not supported with train\.parallel=fsdp"):
        resolve_precision("fp16", torch.device("cuda"), "fsdp")
    assert resolve_precision("fp16", torch.device("cuda"), "ddp") == "fp16"


def test_fsdp_on_one_process_matches_the_plain_run(tmp_path, tiny_data):
    args = ("train.max_steps=3", "train.eval_interval=3", "train.save_interval=3", "train.sample_tokens=4")
    train(tiny_config(tmp_path / "plain", tiny_data, *args))
    train(tiny_config(tmp_path / "fsdp", tiny_data, *args, "train.parallel=fsdp"))
    assert not torch.distributed.is_initialized()  # the size-1 process group is closed again
    plain, fsdp = losses(tmp_path / "plain"), losses(tmp_path / "fsdp")
    assert plain.keys() == fsdp.keys() == {1, 2, 3}
    for step in plain:
        assert fsdp[step] == pytest.approx(plain[step], abs=1e-6)


def test_full_state_moves_between_plain_and_sharded_models_by_name():
    cfg = Config(model=ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16,
                                   tie_embeddings=True))
    cfg.train.parallel = "fsdp"
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))

    def step(model, optimizer):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    torch.manual_seed(0)
    plain = Transformer(cfg.model)
    plain_opt = build_optimizer(plain, cfg.optim, "cpu")
    assert full_optimizer_state(plain, plain_opt) is None  # nothing to save before the first step
    step(plain, plain_opt)
    # Copies, as if read from a checkpoint: in one process the "full" state may share memory with `plain`.
    weights, optim_state = copy.deepcopy((full_model_state(plain), full_optimizer_state(plain, plain_opt)))
    assert "output.weight" not in weights  # the tied head is the embedding
    assert set(optim_state["state"]) == {n for n, _ in plain.named_parameters()}

    world = init_world("cpu", "fsdp")  # a process group of one
    try:
        with torch.device("meta"):
            sharded = Transformer(cfg.model)
        apply_parallelism(sharded, cfg.train, Plan(world, torch.device("cpu"), "fsdp", "fp32"))
        sharded.to_empty(device="cpu")
        sharded.rope.reset_parameters()
        load_full_model_state(sharded, weights)
        sharded_opt = build_optimizer(sharded, cfg.optim, "cpu")
        load_full_optimizer_state(sharded, sharded_opt, optim_state)
        assert sharded.output.weight is sharded.tok_embeddings.weight
        step(plain, plain_opt)
        step(sharded, sharded_opt)
        got, expected = full_model_state(sharded), full_model_state(plain)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
        back = full_optimizer_state(sharded, sharded_opt)
        for name, state in full_optimizer_state(plain, plain_opt)["state"].items():
            assert float(back["state"][name]["step"]) == float(state["step"]) == 2
            torch.testing.assert_close(back["state"][name]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6)
    finally:
        close_world()
