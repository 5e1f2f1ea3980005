//! Integration tests of the operator against the Kubernetes API double: the
//! real kube client and the real kube-runtime Controller over HTTP.
//! One test binary (builds are slow on small machines); modules by topic.

mod cli;
mod crd_validation;
mod harness;
mod scenarios;
