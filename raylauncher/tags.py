"""The EC2 tags that name a cluster: shared by the config renderer (which puts them on every
node), the launcher's IAM policy (which requires them) and the reaper (which finds by them)."""

CLUSTER_NAME_PREFIX = "rl-"
#: The tag Ray's AWS provider puts on every node of a cluster (value: the cluster name).
RAY_CLUSTER_TAG = "ray-cluster-name"
#: Our own tags: raylauncher:job-id, :pipeline, :trigger, :expires-at.
TAG_PREFIX = "raylauncher:"
EXPIRES_AT_TAG = TAG_PREFIX + "expires-at"
