"""lvscare: a node-local, health-checked IPVS load balancer for the Kubernetes control plane."""

__version__ = "0.1.0"
