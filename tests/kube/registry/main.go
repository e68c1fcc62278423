// Command registry is the OCI registry the guest's node pulls the driver's
// images from and Helm installs the chart from (oci://): distribution's own
// registry command (github.com/distribution/distribution/v3, the registry
// that Docker's registry image runs), with the filesystem storage driver
// only: the cloud storage drivers upstream's cmd/registry links (Azure, GCS,
// S3) would more than double the build and are never used here.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
