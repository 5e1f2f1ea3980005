//! The ClusterIP Service exposing the gRPC and admin ports, plus the ports
//! other kinds contribute (the gRPC-Web proxy's).

use grpc_contract::admin::{ADMIN_PORT_NAME, GRPC_PORT_NAME};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::discovery::ApiResource;
use serde_json::Value;

use super::labels::{child_meta, selector_labels};
use super::{BuildError, ChangeMarker, ChildKind, ObservedChildren, Workload, to_value};
use crate::reconcile::validate::ValidatedService;

/// `appProtocol` of the gRPC port. Without it, service meshes and gateways
/// speak HTTP/1.1 to a cleartext HTTP/2 server and answer 502.
pub const GRPC_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// The Service kind.
pub struct ServiceKind;

impl ChildKind for ServiceKind {
    fn kind(&self) -> &'static str {
        "Service"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<Service>(&())
    }

    fn wanted(&self, _svc: &ValidatedService) -> bool {
        true
    }

    fn build(
        &self,
        svc: &ValidatedService,
        workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        to_value(self.kind(), &service(svc, workload))
    }

    // Services have no generation.
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::ResourceVersion
    }
}

/// Builds the Service.
pub fn service(svc: &ValidatedService, workload: &Workload) -> Service {
    let mut ports = vec![
        ServicePort {
            name: Some(GRPC_PORT_NAME.to_owned()),
            port: svc.port,
            target_port: Some(IntOrString::String(GRPC_PORT_NAME.to_owned())),
            protocol: Some("TCP".to_owned()),
            // `kubernetes.io/h2c` means cleartext HTTP/2. Kubernetes defines no
            // value for HTTP/2 over TLS (GEP-1911 has h2c, ws and wss), so with
            // TLS the port claims nothing rather than something false.
            app_protocol: (!workload.grpc_port_tls).then(|| GRPC_APP_PROTOCOL.to_owned()),
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
    ];
    ports.extend(super::envoy_config::native_service_port(svc));
    ports.extend(workload.service_ports.iter().cloned());
    Service {
        metadata: child_meta(svc),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(svc)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn service_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "Service").expect("wanted"));
    }

    #[test]
    fn the_grpc_port_claims_h2c_only_without_tls() {
        let ports = |obj: &crate::api::GrpcService| {
            let svc: Service =
                serde_json::from_value(build(obj, "Service").expect("wanted")).expect("Service");
            svc.spec.and_then(|s| s.ports).expect("ports")
        };
        let by_name = |ports: &[ServicePort], n: &str| {
            ports.iter().find(|p| p.name.as_deref() == Some(n)).cloned().expect("port")
        };
        let mutual = ports(&sample());
        assert_eq!(by_name(&mutual, "grpc").app_protocol, None, "TLS is not cleartext HTTP/2");
        assert_eq!(by_name(&mutual, "grpc").port, 50051);
        assert_eq!(by_name(&mutual, "admin").app_protocol.as_deref(), Some("http"));
        assert_eq!(by_name(&mutual, "admin").port, 9090);
        let mut plain = sample();
        plain.spec.tls =
            Some(crate::api::Tls { mode: Some(crate::api::TlsMode::Disabled), ..Default::default() });
        assert_eq!(by_name(&ports(&plain), "grpc").app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }
}
