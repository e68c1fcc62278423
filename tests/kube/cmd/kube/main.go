// Command kube is one binary for the real Kubernetes components the tests run:
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
// and etcd,
// each built from its upstream module at the version go.mod pins.
//
// The component is the name the binary is called by (a symlink), or its first
// argument:
//
//	kube kube-apiserver --etcd-servers=... (or kube-apiserver --etcd-servers=...)
//
// One component per process: they share global flag and feature-gate state.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // as kube-apiserver and kube-controller-manager do (CronJob time zones)

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy":              func() *cobra.Command { return proxy.NewProxyCommand() },
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if _, known := components[name]; !known && name != "etcd" && len(os.Args) > 1 {
		name = os.Args[1]
		args = os.Args[1:]
	}
	if name == "etcd" {
		// etcdmain parses os.Args itself.
		os.Args = args
		etcdmain.Main(args)
		return
	}
	newCommand, ok := components[name]
	if !ok {
		names := []string{"etcd"}
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kube COMPONENT [FLAGS]  (or call it by a component's name)\ncomponents: %s\n", strings.Join(names, ", "))
		os.Exit(2)
	}
	cmd := newCommand()
	cmd.SetArgs(args[1:])
	os.Exit(cli.Run(cmd))
}
