//go:build tools

// Package tools pins the control-plane programs that deploy/local/ensure-k8s.sh builds, so that
// `go mod tidy` keeps them (and the exact versions in go.sum) in this module.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
