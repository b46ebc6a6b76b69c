"""cdk.json's deployment settings: which images bring the pinned Ray (nodes and bastion apart)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cdk.config import DeploymentConfig

BAKED = "ami-0123456789abcdef0"


def test_a_baked_node_image_skips_the_nodes_install_but_not_the_bastions() -> None:
    # Given a node image baked with the pinned Ray, and internet egress for the bastion
    config = DeploymentConfig(node_ami_id=BAKED, node_ami_has_ray=True)
    # Then nodes only check Ray at boot; the bastion still installs from the index
    assert (config.nodes_have_ray, config.ray_preinstalled) == (True, False)
    # And a stock image (the default) installs on every node; without egress both images must bring it
    assert DeploymentConfig().nodes_have_ray is False
    offline = DeploymentConfig(egress="none", node_ami_id=BAKED, bastion_ami_id="ami-0fedcba9876543210")
    assert (offline.nodes_have_ray, offline.ray_preinstalled) == (True, True)


def test_a_baked_image_flag_without_the_image_is_refused() -> None:
    with pytest.raises(ValidationError, match="node_ami_has_ray needs node_ami_id"):
        DeploymentConfig(node_ami_has_ray=True)
