"""kubeplane.node: a process node that runs Pods as real local processes (no container runtime).

`python -m kubeplane.node ...` registers a Node, binds unscheduled pods to itself, and runs each
container's command from the project's Python environment inside a per-pod network namespace on a
private bridge. The `image` is recorded in the status, never pulled. Service names resolve through a
small DNS server on the bridge IP and ClusterIPs are served by a userspace TCP proxy. A simulated mode
(flag `--simulated`, or pod annotation `localkube/simulated: "true"`) marks pods Running and Ready
without a process, for benchmarks. `cleanup.cleanup(state_dir)` removes what a crashed node left.
The kubelet port serves logs, exec, attach and port-forward (SPDY/3.1, and WebSockets where the API
server passes them through).

Modules: `node` (wiring), `podworker` (one real pod), `simulated`, `binder`, `registration`,
`envvars`, `probes`, `backoff`, `podstatus`, `process`, `logfiles`, `logserver`, `kubeletserver`
(the kubelet port), `spdy` + `spdysession` (SPDY/3.1), `wsstream` (WebSockets), `remotecommand`
(exec/attach protocol), `podexec` (commands in a container), `portforward`, `netns`, `ipam`,
`dnsserver`, `servicetable`, `serviceproxy`, `informer`, `kubeapi`, `workpool`, `events`,
`resources`, `cleanup`.
"""
