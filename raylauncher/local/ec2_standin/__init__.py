"""The EC2 stand-in: Ray's real cluster launcher against moto's EC2, each instance a network
namespace with sshd on one Linux machine. See standin.py; the deltas from a real deployment
are all in deltas.py."""

from raylauncher.local.ec2_standin.standin import Ec2StandIn, StandInUnavailable, unavailable

__all__ = ["Ec2StandIn", "StandInUnavailable", "unavailable"]
