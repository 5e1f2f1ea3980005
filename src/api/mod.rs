//! The `GrpcService` API (`grpcoperator.io`). The CRD in `crds/` is generated
//! from these types: doc comments become descriptions, schema bounds and CEL
//! rules live on the fields.

pub mod v1alpha1;

pub use v1alpha1::{
    AlertSeverity, Alerts, AllowedClient, Autoscaling, BrowserTls, CertificateStatus, Dashboard, Disruption,
    EnvoySidecar, GrpcService, GrpcServiceSpec, GrpcServiceStatus, GrpcWeb, GrpcWebMode, ImagePullPolicy,
    IssuerKind, IssuerRef, Monitoring, PrivateKeyRotation, ServiceMonitorSettings, Shutdown, Slo, Tls,
    TlsMode,
};

/// API group of every grpc-operator resource.
pub const GROUP: &str = "grpcoperator.io";
