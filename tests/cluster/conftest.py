"""The namespace cluster fixture (tests/cluster/cluster.py): one per test module, torn down on every
exit path. Skipped, with the reason, only where this process cannot create network namespaces."""

import pytest

from tests.cluster.cluster import HOSTS, Cluster
from tests.cluster.netns import TestNetwork, can_create_namespaces


@pytest.fixture(scope="module")
def cluster():
    reason = can_create_namespaces()
    if reason:
        pytest.skip(reason)
    with TestNetwork(list(HOSTS)) as net:
        built = Cluster(net)
        try:
            yield built.start()
        finally:
            built.stop()
