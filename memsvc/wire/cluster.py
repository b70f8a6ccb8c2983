"""How memsvc's servers are found on a Ray cluster (`memsvc cluster up`): named actors in one
namespace, the primary by one name and each node's read replica by its node id. Shared by the
deployment (memsvc/server/cluster.py) and the workers that look servers up
(clients.client.MemoryClient.for_cluster)."""
NAMESPACE = "memsvc"
PRIMARY = "primary"


def replica_name(node_id: str) -> str:
    return f"replica-{node_id}"
