// Package helm pins the Helm CLI (helm.sh/helm/v4, cmd/helm) that installs
// the chart into the guest's real node: a module of its own, so Helm's
// dependencies never change the Kubernetes or containerd builds. Built by
// ../build.sh.
package helm
