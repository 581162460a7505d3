"""The node side of a kubelet: the Node object, its Lease, its status and conditions."""
