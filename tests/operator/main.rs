//! Integration tests of the operator against a real Kubernetes control plane
//! (testkit's TestCluster: kube-apiserver, controller-manager, scheduler,
//! etcd, kwok nodes), the operator running as its own ServiceAccount.
//! One test binary (builds are slow on small machines); modules by topic.

mod children;
mod cli;
mod crd_validation;
mod envoy;
mod grpc_web;
mod harness;
mod monitoring;
mod mtls;
mod rbac;
mod scenarios;
mod workload;
