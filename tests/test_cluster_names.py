"""The cluster's master hosts libproc's name service at its own address."""

from __future__ import annotations

import pytest

from cluster_harness import Cluster, cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def test_master_hosts_the_name_service_at_its_own_address(cluster: Cluster) -> None:
    cluster.start_master()
    listing = cluster.api.get_json("/names/instances")
    assert isinstance(listing, (dict, list))
    processes = cluster.api.get_json("/__processes__")
    assert {"master", "names"} <= {p["id"] for p in processes}
