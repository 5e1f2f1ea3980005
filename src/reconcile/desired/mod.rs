//! desired: pure builders from a [`ValidatedService`] to the child objects.
//! No client, no I/O: `render` and the controller call the same functions, so
//! a preview is exactly what the controller applies.

pub mod deployment;
pub mod labels;
pub mod service;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use serde::Serialize;

use crate::reconcile::validate::ValidatedService;
use labels::APPLIED_DIGEST_ANNOTATION;

/// Every child object of one GrpcService, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The workload.
    pub deployment: Deployment,
    /// Its ClusterIP Service.
    pub service: Service,
}

/// Builds every child object, each stamped with the digest of its content.
pub fn desired(svc: &ValidatedService) -> Desired {
    Desired {
        deployment: with_digest(deployment::deployment(svc)),
        service: with_digest(service::service(svc)),
    }
}

impl Desired {
    /// The children as JSON values in apply order (Deployment, Service).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        Ok(vec![serde_json::to_value(&self.deployment)?, serde_json::to_value(&self.service)?])
    }
}

/// Stamps [`APPLIED_DIGEST_ANNOTATION`] with a digest of the object as built.
/// The controller compares it with the live object's annotation to see that
/// the desired object changed, including fields that were removed.
fn with_digest<K: Resource + Serialize>(mut obj: K) -> K {
    let digest = serde_json::to_vec(&obj).map(|bytes| fnv1a64(&bytes)).unwrap_or_default();
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_DIGEST_ANNOTATION.to_owned(), format!("{digest:016x}"));
    obj
}

/// FNV-1a, 64 bit. Hand-written because the digest must be stable across Rust
/// releases (std's `DefaultHasher` is not) and is not a security boundary, so
/// a cryptographic hash crate would be weight without benefit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}
