"""Loading a trained model skips the random initialisation its checkpoint overwrites, and only then."""

import pytest
import torch
from torch import nn

from mmtrain.inference.trained import _build_for_loading, find_trained, load_trained_model
from mmtrain.training.checkpoint.store import covers_model, load_checkpoint
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.models.skip_init import initialisers_skipped
from mmtrain.training.tasks.registry import trainer
from tests.trained_models import save_clip, save_tiny_vlm, tiny_clip_config


@pytest.fixture(scope="module")
def clip_checkpoint(synth_dir, tmp_path_factory):
    """A tiny CLIP whose weights are not what any initialiser would give them, saved as a run saves."""
    cfg = tiny_clip_config(synth_dir)
    model = ClipModel(cfg.model, cfg.data.context_length, cfg.loss)
    with torch.no_grad():
        for index, param in enumerate(model.parameters()):
            param.copy_(torch.linspace(-1, 1, param.numel()).reshape(param.shape) + index)
    return save_clip(model, cfg, tmp_path_factory.mktemp("run")), model.state_dict()


def test_a_clip_loaded_without_its_initialisers_holds_exactly_the_checkpoints_weights(clip_checkpoint):
    directory, saved = clip_checkpoint
    run = find_trained(directory, "clip", "embed")
    _, model = load_trained_model(run, torch.device("cpu"))
    assert covers_model(directory, model)  # so the build skipped the initialisers
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


class ClipWithAnExtraWeight:
    """A task whose model has a weight the checkpoint does not hold (a key it lacks)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self):
        model = ClipModel(self.cfg.model, self.cfg.data.context_length, self.cfg.loss)
        model.extra = nn.Parameter(torch.empty(64))
        nn.init.ones_(model.extra)
        return model


def test_a_weight_the_checkpoint_lacks_keeps_its_initial_value(clip_checkpoint):
    directory, _ = clip_checkpoint
    run = find_trained(directory, "clip", "embed")
    model = _build_for_loading(ClipWithAnExtraWeight(run.cfg), directory)
    assert not covers_model(directory, model)
    assert torch.equal(model.extra.detach(), torch.ones(64))


def test_the_initialisers_come_back_even_when_the_build_fails():
    before = nn.init.normal_
    with pytest.raises(RuntimeError), initialisers_skipped():
        assert nn.init.normal_ is not before
        raise RuntimeError("the build failed")
    assert nn.init.normal_ is before
    assert nn.init.normal_(torch.zeros(1000)).std() > 0.5


def test_a_vlm_loaded_without_its_initialisers_holds_exactly_the_checkpoints_weights(
    clip_checkpoint, synth_dir, tmp_path
):
    tower, _ = clip_checkpoint
    run = find_trained(save_tiny_vlm(tower, synth_dir, tmp_path / "vlm"), "vlm", "ask")
    _, model = load_trained_model(run, torch.device("cpu"))
    assert covers_model(run.checkpoint, model)  # every VLM weight is saved: the build skipped the initialisers
    reference = trainer("vlm").task(run.cfg).build_model()
    load_checkpoint(run.checkpoint, reference)
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
