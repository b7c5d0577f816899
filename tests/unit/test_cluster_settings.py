"""The [cluster] config section: typed once, refusing what would break the cluster, with the field named."""

from __future__ import annotations

import msgspec
import pytest

from kassa.server.cluster.settings import ClusterSection

BASE = {"node_id": "node-a", "advertise": "10.0.0.1:50051", "nats_urls": ["nats://10.0.0.1:4222"]}


def section(**changes) -> ClusterSection:
    return msgspec.convert({**BASE, **changes}, ClusterSection)


class TestClusterSection:
    def test_defaults_give_three_replicas_and_the_default_lease(self):
        cluster = section()
        assert cluster.replicas == 3
        assert cluster.lease_timing().ttl_ms == cluster.lease_ttl_ms

    @pytest.mark.parametrize(("changes", "named"), [
        ({"node_id": "node a"}, "cluster.node_id"),
        ({"nats_urls": []}, "cluster.nats_urls"),
        ({"partitions": 0}, "cluster.partitions"),
        ({"replicas": 2}, "cluster.replicas"),
        ({"lease_ttl_ms": 1_000, "lease_renew_interval_ms": 900}, "cluster.lease_renew_interval_ms"),
    ])
    def test_a_bad_value_is_refused_naming_the_field(self, changes, named):
        with pytest.raises(msgspec.ValidationError, match=named):
            section(**changes)

    def test_an_unknown_key_is_refused(self):
        with pytest.raises(msgspec.ValidationError, match="nodes"):
            section(nodes=3)

    def test_the_node_id_and_addresses_are_required(self):
        with pytest.raises(msgspec.ValidationError, match="advertise"):
            msgspec.convert({"node_id": "a", "nats_urls": ["nats://x:4222"]}, ClusterSection)

    def test_without_nats_urls_the_section_is_off(self):
        assert not msgspec.convert({}, ClusterSection).enabled
