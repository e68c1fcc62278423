// Package kwok pins kwok (sigs.k8s.io/kwok), which simulates Nodes and the
// lifecycle of their Pods against a real kube-apiserver: the fleet
// benchmark's nodes (`just bench-fleet`). Its own module: kwok v0.8.0 is
// built with the Kubernetes libraries it was released with (v0.36), not
// Kubernetes 1.37.2's.
package kwok
