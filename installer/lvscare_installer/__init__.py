"""installer: bootstrap Kubernetes nodes with lvscare in place before kubeadm join."""
