//! The ClusterIP Service exposing the gRPC and admin ports.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{child_meta, selector_labels};
use crate::contract::{ADMIN_PORT_NAME, GRPC_PORT_NAME};
use crate::reconcile::validate::ValidatedService;

/// `appProtocol` of the gRPC port. Without it, service meshes and gateways
/// speak HTTP/1.1 to a cleartext HTTP/2 server and answer 502.
pub const GRPC_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// Builds the Service.
pub fn service(svc: &ValidatedService) -> Service {
    Service {
        metadata: child_meta(svc),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(svc)),
            ports: Some(vec![
                ServicePort {
                    name: Some(GRPC_PORT_NAME.to_owned()),
                    port: svc.port,
                    target_port: Some(IntOrString::String(GRPC_PORT_NAME.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some(GRPC_APP_PROTOCOL.to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some(ADMIN_PORT_NAME.to_owned()),
                    port: svc.admin_port,
                    target_port: Some(IntOrString::String(ADMIN_PORT_NAME.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("http".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
