"""kubeplane: a real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager).

No Docker, no images: the binaries are built from the Go module proxy by hack/build-control-plane.sh and
run as plain processes on loopback ports. Everything a plane owns lives in one state directory
(tmpfs by default), described by its state.json; `down` needs nothing else, even after a crash.

Modules: `pki` (certificates and kubeconfigs), `state` (state dir, ports, network index, process
identity), `components` (argv and health of each process), `plane` (up/down/stop/start), `cli`.
"""
