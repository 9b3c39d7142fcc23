"""The coupled baseline of the isolation study trains the plain loss only."""

import pytest
import torch

from wm_core.losses import PLAIN_LOSS
from wm_train import Config
from wm_train.coupled import CoupledWorldModel


@pytest.mark.parametrize("option", [{"overshooting": 2}, {"free_nats": 0.5}, {"recon_change_weight": 20.0}])
def test_coupled_model_refuses_what_the_plain_loss_does_not_have(random_batch, option):
    model = CoupledWorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    with pytest.raises(ValueError, match="the coupled baseline trains the plain loss"):
        model(*random_batch, **option)


def test_coupled_model_reads_the_settings_whole(random_batch):
    torch.manual_seed(0)
    model = CoupledWorldModel(Config.from_dict({"model": {"size": "tiny"}}).model)
    torch.manual_seed(1)
    whole = model(*random_batch, PLAIN_LOSS.at_step(0)).scalars()
    torch.manual_seed(1)
    assert model(*random_batch, beta=1.0).scalars() == whole
