"""optim.name=muon under two processes (gloo on CPU): DDP orthogonalizes the all-reduced full gradient on
every rank; FSDP2 all-gathers each momentum shard, orthogonalizes the full matrix and keeps its own rows. Both
must match the single-process run of the same global batch, and a 2-rank FSDP checkpoint resumes in one process.
"""

from __future__ import annotations

import pytest

from train.trainer import train

from .conftest import losses, tiny_config, torchrun
from .test_data_parallel import RUN, STEPS, TWO_RANKS, assert_same_losses, assert_same_weights, ok

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MUON = (*RUN, "optim.name=muon", "model.tie_embeddings=true")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("muon_reference")
    train(tiny_config(out, tiny_data, *MUON))
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_muon_matches_single_process(tmp_path, tiny_data, reference, parallel):
    config = tmp_path / "run.yaml"
    tiny_config(tmp_path / "run", tiny_data, *MUON).save(config)
    proc = ok(torchrun(config, *TWO_RANKS, f"train.parallel={parallel}"))
    assert f"parallel {parallel}, 2 rank(s)" in proc.stdout
    assert_same_losses(losses(tmp_path / "run"), losses(reference))
    assert_same_weights(tmp_path / "run", reference, atol=1e-5)


def test_muon_fsdp_checkpoint_resumes_on_one_rank(tmp_path, tiny_data, reference):
    config = tmp_path / "split.yaml"
    tiny_config(tmp_path / "split", tiny_data, *MUON).save(config)
    ok(torchrun(config, *TWO_RANKS, "train.parallel=fsdp", "train.stop_at_step=3"))
    assert train(tiny_config(tmp_path / "split", tiny_data, *MUON)).step == STEPS
    assert_same_losses(losses(tmp_path / "split"), losses(reference))
    assert_same_weights(tmp_path / "split", reference, atol=1e-5)
