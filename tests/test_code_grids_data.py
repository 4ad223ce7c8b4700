"""CodeGridDataModule: raster-order tokens, loaders, vocabulary checks and empty splits."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from geovq.artifacts import CODE_GRIDS, save_artifact, save_code_grids
from geovq.data.code_grids import CodeGridDataModule
from geovq.errors import ArtifactError, ConfigError

K = 12


def make_grids(n_train=40, n_val=10, n_test=7, n_codes=K, shape=(7, 7)):
    gen = torch.Generator().manual_seed(0)
    return {
        "train": torch.randint(0, n_codes, (n_train, *shape), generator=gen),
        "val": torch.randint(0, n_codes, (n_val, *shape), generator=gen),
        "test": torch.randint(0, n_codes, (n_test, *shape), generator=gen),
    }


@pytest.fixture
def artifact(tmp_path):
    grids = make_grids()
    path = tmp_path / "codes.pt"
    save_code_grids(path, grids, K, stage="test", config={})
    return path, grids


def test_tokens_are_raster_order_int64(artifact):
    path, grids = artifact
    data = CodeGridDataModule(path, n_codes=K)
    data.setup("fit")
    assert data.n_codes == K and data.grid_shape == (7, 7)
    for name, grid in grids.items():
        tokens = data.split(name)
        assert tokens.dtype == torch.int64 and tokens.shape == (len(grid), 49)
        for r, c in [(0, 0), (0, 6), (1, 0), (3, 4), (6, 6)]:
            assert torch.equal(tokens[:, r * 7 + c], grid[:, r, c])


def test_n_codes_comes_from_the_artifact_when_not_given(artifact):
    data = CodeGridDataModule(artifact[0])
    assert data.n_codes == K


def test_loaders(artifact):
    path, grids = artifact
    data = CodeGridDataModule(path, batch_size=16, eval_batch_size=4, n_codes=K)
    data.setup("fit")
    train = data.train_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.batch_size == 16
    for loader, name in ((data.val_dataloader(), "val"), (data.test_dataloader(), "test")):
        assert isinstance(loader.sampler, SequentialSampler) and loader.batch_size == 4
        batches = list(loader)
        assert all(isinstance(b, list) and len(b) == 1 for b in batches)
        assert torch.equal(torch.cat([b[0] for b in batches]), grids[name].reshape(-1, 49))
    seen = torch.cat([b[0] for b in train])
    assert seen.shape == (40, 49)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, grids["train"].reshape(-1, 49).tolist()))


def test_vocabulary_mismatch_names_both_numbers_and_the_fix(artifact):
    data = CodeGridDataModule(artifact[0], n_codes=64)
    with pytest.raises(ConfigError, match=r"K=12.*n_codes=64.*model\.n_codes=12"):
        data.setup("fit")


def test_codes_outside_the_codebook(tmp_path):
    grids = make_grids()
    grids["val"][0, 3, 3] = K  # save_code_grids refuses this, so write the artifact by hand
    path = tmp_path / "bad.pt"
    save_artifact(path, CODE_GRIDS, {"n_codes": K, "splits": grids}, stage="test")
    with pytest.raises(ConfigError, match=rf"'val'.*outside \[0, {K}\)"):
        CodeGridDataModule(path).setup("fit")


def test_empty_split(tmp_path):
    grids = make_grids()
    grids["test"] = torch.zeros(0, 7, 7, dtype=torch.int64)
    path = tmp_path / "codes.pt"
    save_code_grids(path, grids, K, stage="test")
    data = CodeGridDataModule(path, n_codes=K)
    data.setup("fit")  # fitting reads train/val only
    with pytest.raises(ConfigError, match="empty 'test' split"):
        data.setup("test")
    with pytest.raises(ConfigError, match="'test'"):
        data.test_dataloader()

    grids = make_grids()
    grids["train"] = torch.zeros(0, 7, 7, dtype=torch.int64)
    save_code_grids(path, grids, K, stage="test")
    with pytest.raises(ConfigError, match="empty 'train' split"):
        CodeGridDataModule(path).setup("fit")


def test_missing_split(tmp_path):
    grids = make_grids()
    del grids["val"]
    path = tmp_path / "codes.pt"
    save_code_grids(path, grids, K, stage="test")
    with pytest.raises(ConfigError, match="no 'val' split"):
        CodeGridDataModule(path).setup("fit")


def test_bad_settings_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        CodeGridDataModule(tmp_path / "x.pt", batch_size=0)
    with pytest.raises(ArtifactError, match="not found"):
        CodeGridDataModule(tmp_path / "missing.pt").setup("fit")
