// Command etcd is etcd's own server entry point (etcdmain), built from go.etcd.io/etcd/server/v3 at
// the version kube-apiserver is tested with, so the control-plane test needs no downloaded binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
