//! The generated CRD's schema and CEL rules reject malformed GrpcServices at
//! the real kube-apiserver, each with the path of the offending field.

use grpc_operator::api::GrpcService;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::harness::Harness;

fn manifest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "grpcoperator.io/v1alpha1",
        "kind": "GrpcService",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn base() -> serde_json::Map<String, Value> {
    match json!({"image": "registry.example.com/a:1", "services": ["a.v1.A"]}) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn with(field: &str, value: Value) -> Value {
    let mut spec = base();
    spec.insert(field.to_owned(), value);
    Value::Object(spec)
}

fn without(field: &str) -> Value {
    let mut spec = base();
    spec.remove(field);
    Value::Object(spec)
}

/// (case, manifest, field path the API must name, text the message must contain)
fn cases() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let many_labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    let many_env: Vec<Value> = (0..257).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect();
    let many_secrets: Vec<Value> = (0..17).map(|i| json!({"name": format!("s{i}")})).collect();
    vec![
        ("missing image", manifest("a", without("image")), "spec.image", "Required value"),
        ("empty image", manifest("a", with("image", json!(""))), "spec.image", "at least 1"),
        (
            "negative replicas",
            manifest("a", with("replicas", json!(-1))),
            "spec.replicas",
            "greater than or equal to 0",
        ),
        (
            "too many replicas",
            manifest("a", with("replicas", json!(1001))),
            "spec.replicas",
            "less than or equal to 1000",
        ),
        (
            "replicas not an integer",
            manifest("a", with("replicas", json!("three"))),
            "spec.replicas",
            "integer",
        ),
        ("port zero", manifest("a", with("port", json!(0))), "spec.port", "greater than or equal to 1"),
        (
            "port above 65535",
            manifest("a", with("port", json!(70000))),
            "spec.port",
            "less than or equal to 65535",
        ),
        (
            "admin port zero",
            manifest("a", with("adminPort", json!(0))),
            "spec.adminPort",
            "greater than or equal to 1",
        ),
        (
            "port equals admin port",
            manifest("a", with("port", json!(9090))),
            "spec.adminPort",
            "port and adminPort must differ",
        ),
        ("missing services", manifest("a", without("services")), "spec.services", "Required value"),
        ("empty services", manifest("a", with("services", json!([]))), "spec.services", "at least 1"),
        (
            "unqualified service name",
            manifest("a", with("services", json!(["UserService"]))),
            "spec.services[0]",
            "should match",
        ),
        (
            "service name with a dash",
            manifest("a", with("services", json!(["user-v1.User"]))),
            "spec.services[0]",
            "should match",
        ),
        (
            "duplicate services",
            manifest("a", with("services", json!(["a.v1.A", "a.v1.A"]))),
            "spec.services[1]",
            "Duplicate value",
        ),
        (
            "service name too long",
            manifest("a", with("services", json!([format!("a.{}", "B".repeat(260))]))),
            "spec.services[0]",
            "253",
        ),
        (
            "unknown pull policy",
            manifest("a", with("imagePullPolicy", json!("Sometimes"))),
            "spec.imagePullPolicy",
            "Unsupported value",
        ),
        (
            "selector label in podLabels",
            manifest("a", with("podLabels", json!({"grpcoperator.io/service": "x"}))),
            "spec.podLabels",
            "selector labels",
        ),
        (
            "too many podLabels",
            manifest("a", with("podLabels", Value::Object(many_labels))),
            "spec.podLabels",
            "64",
        ),
        (
            "certificate shorter than an hour",
            manifest("a", with("tls", json!({"duration": "30m"}))),
            "spec.tls.duration",
            "between 1h and 8760h",
        ),
        (
            "certificate longer than a year",
            manifest("a", with("tls", json!({"duration": "9000h"}))),
            "spec.tls.duration",
            "between 1h and 8760h",
        ),
        (
            "renewBefore not less than duration",
            manifest("a", with("tls", json!({"duration": "24h", "renewBefore": "24h"}))),
            "spec.tls.renewBefore",
            "less than duration",
        ),
        (
            "renewBefore beyond the default duration",
            manifest("a", with("tls", json!({"renewBefore": "800h"}))),
            "spec.tls.renewBefore",
            "less than duration",
        ),
        (
            "a duration that is not hours and minutes",
            manifest("a", with("tls", json!({"duration": "1d"}))),
            "spec.tls.duration",
            "should match",
        ),
        (
            "allowedClients without mutual TLS",
            manifest(
                "a",
                with(
                    "tls",
                    json!({"mode": "server", "allowedClients": [{"spiffeId": "spiffe://cluster.local/ns/a/sa/b"}]}),
                ),
            ),
            "spec.tls.allowedClients",
            "needs mode mutual",
        ),
        (
            "an allowed client that is both an ID and a name",
            manifest(
                "a",
                with(
                    "tls",
                    json!({"allowedClients": [{"spiffeId": "spiffe://cluster.local/ns/a/sa/b", "name": "b"}]}),
                ),
            ),
            "spec.tls.allowedClients[0]",
            "exactly one of spiffeId and name",
        ),
        (
            "issuerRef with TLS disabled",
            manifest("a", with("tls", json!({"mode": "disabled", "issuerRef": {"name": "ca"}}))),
            "spec.tls.issuerRef",
            "may not be disabled",
        ),
        (
            "an unknown TLS mode",
            manifest("a", with("tls", json!({"mode": "sometimes"}))),
            "spec.tls.mode",
            "Unsupported value",
        ),
        (
            "service account not a DNS name",
            manifest("a", with("serviceAccountName", json!("Bad_SA"))),
            "spec.serviceAccountName",
            "should match",
        ),
        (
            "env entry without name",
            manifest("a", with("env", json!([{"value": "x"}]))),
            "spec.env[0].name",
            "Required value",
        ),
        ("too many env entries", manifest("a", with("env", json!(many_env))), "spec.env", "256"),
        (
            "too many pull secrets",
            manifest("a", with("imagePullSecrets", json!(many_secrets))),
            "spec.imagePullSecrets",
            "16",
        ),
        (
            "resources limits not a map",
            manifest("a", with("resources", json!({"limits": "lots"}))),
            "spec.resources.limits",
            "object",
        ),
        (
            "env fieldRef without fieldPath",
            manifest("a", with("env", json!([{"name": "X", "valueFrom": {"fieldRef": {}}}]))),
            "spec.env[0].valueFrom.fieldRef.fieldPath",
            "Required value",
        ),
        (
            "replicas with autoscaling",
            manifest(
                "a",
                json!({"image": "i:1", "services": ["a.v1.A"], "replicas": 2, "autoscaling": {"maxReplicas": 3}}),
            ),
            "spec.autoscaling",
            "mutually exclusive",
        ),
        (
            "minReplicas above maxReplicas",
            manifest("a", with("autoscaling", json!({"minReplicas": 5, "maxReplicas": 3}))),
            "spec.autoscaling.minReplicas",
            "greater than maxReplicas",
        ),
        (
            "maxReplicas missing",
            manifest("a", with("autoscaling", json!({"minReplicas": 2}))),
            "spec.autoscaling.maxReplicas",
            "Required value",
        ),
        (
            "both disruption limits",
            manifest("a", with("disruption", json!({"minAvailable": 1, "maxUnavailable": 1}))),
            "spec.disruption",
            "exactly one",
        ),
        (
            "shutdown delay without a unit",
            manifest("a", with("shutdown", json!({"drainDelay": "5"}))),
            "spec.shutdown.drainDelay",
            "should match",
        ),
        (
            "gRPC-Web enabled without an origin",
            manifest("a", with("grpcWeb", json!({"enabled": true}))),
            "spec.grpcWeb.allowedOrigins",
            "at least one origin",
        ),
        (
            "a * origin without allowAnyOrigin",
            manifest("a", with("grpcWeb", json!({"enabled": true, "allowedOrigins": ["*"]}))),
            "spec.grpcWeb.allowedOrigins",
            "allowAnyOrigin",
        ),
        (
            "an origin with a path",
            manifest(
                "a",
                with("grpcWeb", json!({"enabled": true, "allowedOrigins": ["https://a.example.com/app"]})),
            ),
            "spec.grpcWeb.allowedOrigins[0]",
            "should match",
        ),
        (
            "a wildcard over a whole top-level domain",
            manifest("a", with("grpcWeb", json!({"enabled": true, "allowedOrigins": ["https://*.com"]}))),
            "spec.grpcWeb.allowedOrigins[0]",
            "should match",
        ),
        (
            "native gRPC-Web with mutual TLS",
            manifest(
                "a",
                with(
                    "grpcWeb",
                    json!({"enabled": true, "mode": "native", "allowedOrigins": ["https://a.example.com"]}),
                ),
            ),
            "spec.grpcWeb.mode",
            "browsers present no client certificate",
        ),
        (
            "the gRPC-Web port on the admin port",
            manifest(
                "a",
                with(
                    "grpcWeb",
                    json!({"enabled": true, "port": 9090, "allowedOrigins": ["https://a.example.com"]}),
                ),
            ),
            "spec.grpcWeb.port",
            "must differ from port and adminPort",
        ),
        (
            "the sidecar's metrics port taken by the workload",
            manifest(
                "a",
                json!({"image": "i:1", "services": ["a.v1.A"], "adminPort": 9902,
                       "grpcWeb": {"enabled": true, "allowedOrigins": ["https://a.example.com"]}}),
            ),
            "spec.grpcWeb.port",
            "9901 or 9902",
        ),
        (
            "browserTLS in native mode",
            manifest(
                "a",
                json!({"image": "i:1", "services": ["a.v1.A"], "tls": {"mode": "server"},
                       "grpcWeb": {"enabled": true, "mode": "native", "allowedOrigins": ["https://a.example.com"],
                                   "browserTLS": {"secretName": "web"}}}),
            ),
            "spec.grpcWeb.browserTLS",
            "needs mode sidecar",
        ),
        (
            "an upper-case extra header",
            manifest(
                "a",
                with(
                    "grpcWeb",
                    json!({"enabled": true, "allowedOrigins": ["https://a.example.com"], "allowedHeaders": ["X-Csrf"]}),
                ),
            ),
            "spec.grpcWeb.allowedHeaders[0]",
            "should match",
        ),
        (
            "a stream duration in days",
            manifest(
                "a",
                with(
                    "grpcWeb",
                    json!({"enabled": true, "allowedOrigins": ["https://a.example.com"], "maxStreamDuration": "1d"}),
                ),
            ),
            "spec.grpcWeb.maxStreamDuration",
            "should match",
        ),
        // A rule on the root names no field; kube-apiserver prints "<nil>".
        ("name not a DNS-1035 label", manifest("1user", Value::Object(base())), "<nil>", "DNS-1035 label"),
    ]
}

#[tokio::test]
async fn malformed_grpc_services_are_rejected_with_their_field_paths() {
    let h = Harness::without_controller().await;
    let ar = ApiResource::erase::<GrpcService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), h.ns(), &ar);
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (case, manifest, field, text) in &cases {
        let obj: DynamicObject = serde_json::from_value(manifest.clone()).expect("manifest parses");
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status)) => {
                let causes: Vec<(String, String)> = status
                    .details
                    .as_ref()
                    .map(|d| d.causes.iter().map(|c| (c.field.clone(), c.message.clone())).collect())
                    .unwrap_or_default();
                let named = causes
                    .iter()
                    .any(|(f, m)| f == field && (m.contains(text) || status.message.contains(text)));
                if status.code != 422 || !named {
                    failures.push(format!(
                        "{case}: code {} message {:?} causes {causes:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // A well-formed manifest passes, so the rejections above are about the field.
    let ok: DynamicObject = serde_json::from_value(manifest("ok", Value::Object(base()))).expect("parses");
    let created = api.create(&PostParams::default(), &ok).await.expect("valid manifest accepted");
    assert_eq!(created.data["spec"]["port"], 50051, "schema default applied");
    assert!(
        created.data["spec"]["replicas"].is_null(),
        "no default: unset replicas leave the count to an HPA or kubectl scale"
    );
    h.shutdown().await;
}
