// Package containerd pins the container runtime side of the test node:
// containerd 2.x with its runc shim and ctr, and the CNI plugins the node's
// pod network needs (bridge, host-local, loopback). Nothing here but the
// `tool` lines of go.mod; tests/kube/build.sh builds them.
package containerd
