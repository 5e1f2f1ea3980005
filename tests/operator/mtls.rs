//! Mutual TLS from the spec, on the real control plane: the operator's CA,
//! the certificates it issues (checked with openssl), the real runtime
//! serving them, and real grpcio and grpc-go peers presenting other
//! GrpcServices' certificates.

use std::collections::BTreeMap;
use std::time::Duration;

use grpc_operator::api::GrpcService;
use grpc_operator::pki::{authority, leaf};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{Harness, condition, create, eventually, patch_spec, sample};
use crate::workload::{Creds, SecretVolume, Workload, container_env, grpc_go, grpcio, secret_data};

fn with_tls(name: &str, tls: Value) -> GrpcService {
    let mut obj = sample(name);
    obj.spec.tls = Some(serde_json::from_value(tls).expect("tls"));
    obj
}

async fn issued(h: &Harness, name: &str) -> Value {
    h.wait_condition(name, "CertificateReady", "True", "Issued").await
}

fn openssl(args: &[&str]) -> String {
    let out =
        std::process::Command::new("openssl").args(args).output().expect("openssl runs (Debian package)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn ts(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().expect("RFC 3339").as_second()
}

#[tokio::test]
async fn issued_certificates_pass_an_openssl_lint_and_are_wired_into_the_pods() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    let obj =
        with_tls("lint", json!({"duration": "48h", "renewBefore": "12h", "dnsNames": ["api.example.com"]}));
    create(&h, &obj).await;
    let ready = issued(&h, "lint").await;
    let data = secret_data(&h, "lint-tls").await;
    let secret = h.api::<Secret>().get("lint-tls").await.expect("Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert!(secret.string_data.is_none());
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, &data[name]).expect("write");
        p.display().to_string()
    };
    let (crt, key, ca) = (file("tls.crt"), file("tls.key"), file("ca.crt"));
    let text = openssl(&["x509", "-noout", "-text", "-in", &crt]);
    for expected in [
        "Public Key Algorithm: id-ecPublicKey",
        "ASN1 OID: prime256v1",
        "Signature Algorithm: ecdsa-with-SHA256",
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
        "X509v3 Key Usage: critical\n                Digital Signature\n",
        "X509v3 Extended Key Usage: \n                TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Authority Key Identifier",
        "X509v3 Subject Key Identifier",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    let sans = format!(
        "DNS:lint, DNS:lint.{ns}, DNS:lint.{ns}.svc, DNS:lint.{ns}.svc.cluster.local, DNS:api.example.com, URI:spiffe://cluster.local/ns/{ns}/sa/lint"
    );
    assert!(text.contains(&sans), "SANs: want {sans}\n{text}");
    assert_eq!(text.matches("URI:").count(), 1, "exactly one URI SAN");
    let serial = openssl(&["x509", "-noout", "-serial", "-in", &crt]);
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    assert_eq!(serial.len(), 32, "a 128-bit serial: {serial}");
    // The authority key identifier names the CA's subject key identifier.
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", &ca]);
    let ski_of = |t: &str| {
        let i = t.find("X509v3 Subject Key Identifier").expect("SKI");
        t[i..].lines().nth(1).expect("value").trim().to_owned()
    };
    assert!(
        text.contains(&format!("Authority Key Identifier: \n                {}", ski_of(&ca_text))),
        "{text}"
    );
    for purpose in ["sslserver", "sslclient"] {
        let verified = openssl(&["verify", "-CAfile", &ca, "-purpose", purpose, &crt]);
        assert!(verified.trim().ends_with(": OK"), "{purpose}: {verified}");
    }
    assert!(String::from_utf8_lossy(&data["tls.key"]).starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8");
    assert_eq!(
        openssl(&["pkey", "-in", &key, "-pubout"]),
        openssl(&["x509", "-noout", "-pubkey", "-in", &crt]),
        "the key is the certificate's"
    );

    // Validity: backdated 5 minutes, NotAfter = issuance + 48h.
    let dates = openssl(&["x509", "-noout", "-dates", "-dateopt", "iso_8601", "-in", &crt]);
    let date = |k: &str| {
        let v = dates.lines().find_map(|l| l.strip_prefix(k)).expect("date").trim().replace(' ', "T");
        ts(&v)
    };
    let (not_before, not_after) = (date("notBefore="), date("notAfter="));
    assert_eq!(not_after - not_before, 48 * 3600 + 300);
    let created = ts(&serde_json::to_value(&secret.metadata.creation_timestamp)
        .expect("ts")
        .as_str()
        .map(str::to_owned)
        .expect("created"));
    assert!(
        (created - (not_before + 300)).abs() <= 5,
        "issued at the Secret's creation: {created} vs {not_before}"
    );

    // Annotations, status and metric agree with the certificate.
    let a = secret.metadata.annotations.clone().unwrap_or_default();
    let cert = &ready["status"]["certificate"];
    assert_eq!(cert["serialNumber"], serial);
    assert_eq!(a["grpcoperator.io/serial"], serial);
    assert_eq!(ts(cert["notAfter"].as_str().expect("notAfter")), not_after);
    assert_eq!(ts(cert["notBefore"].as_str().expect("notBefore")), not_before);
    let renewal = ts(cert["renewalTime"].as_str().expect("renewalTime"));
    let planned = not_after - 12 * 3600;
    assert!(renewal <= planned && renewal >= planned - 12 * 360, "renewal {renewal}, planned {planned}");
    assert_eq!(a["grpcoperator.io/renewal-time"], cert["renewalTime"]);
    let ca_secret = secret_data(&h, "grpc-operator-ca").await;
    let ca_der = grpc_operator::pki::pem_certificates(&ca_secret["tls.crt"]).expect("pem").remove(0);
    assert_eq!(cert["issuerFingerprint"], grpc_operator::pki::sha256_hex(&ca_der));
    let gauge = h.metrics.certificate_expiration.with_label_values(&[&ns, "lint"]).get();
    assert_eq!(gauge, not_after);
    let text = serde_json::to_string(&ready).expect("json");
    assert!(!text.contains("PRIVATE") && !text.contains("BEGIN"), "no key material in status: {text}");

    // The pods run as the GrpcService's own account and mount the Secret.
    let sa = h.api::<ServiceAccount>().get("lint").await.expect("ServiceAccount");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let dep = h.deployment("lint").await.expect("Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lint");
    let volume =
        pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "grpc-tls").expect("volume");
    assert_eq!(volume["secret"]["secretName"], "lint-tls");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "grpc-tls")
        .expect("mount");
    assert!(mount.get("subPath").is_none(), "a subPath mount never sees the kubelet's updates");
    let env = container_env(&h, "lint").await;
    assert_eq!(env["TLS_MODE"], "mutual");
    assert_eq!(env["TLS_DIR"], mount["mountPath"].as_str().expect("path"));
    assert_eq!(
        env["GRPC_ALLOWED_PEERS"], "spiffe://cluster.local/ns/*/sa/*",
        "empty allowedClients: the trust domain"
    );
    let svc = h.service("lint").await.expect("Service");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], Value::Null, "TLS is not h2c");
    // The CA, and the marker that says one exists.
    h.api::<ConfigMap>().get("grpc-operator-ca").await.expect("marker ConfigMap");
    h.shutdown().await;
}

#[tokio::test]
async fn a_runtime_serving_an_operator_issued_certificate_admits_exactly_its_allowed_clients() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    for name in ["b", "c"] {
        create(&h, &sample(name)).await;
    }
    create(&h, &with_tls("a", json!({"allowedClients": [{"name": "b"}]}))).await;
    for name in ["a", "b", "c"] {
        issued(&h, name).await;
    }
    let env = container_env(&h, "a").await;
    assert_eq!(env["GRPC_ALLOWED_PEERS"], format!("spiffe://cluster.local/ns/{ns}/sa/b"));

    let tmp = tempfile::tempdir().expect("tempdir");
    let _volume = SecretVolume::create(&tmp.path().join("a"), &secret_data(&h, "a-tls").await);
    let a = Workload::start(&h, "a", &tmp.path().join("a")).await;
    let server_name = format!("a.{ns}.svc");
    let b = Creds::from_secret(tmp.path(), "b", &secret_data(&h, "b-tls").await);
    let c = Creds::from_secret(tmp.path(), "c", &secret_data(&h, "c-tls").await);

    let ok = grpcio(a.grpc, &server_name, &b, &[]).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["user"]["name"], "alice");
    let ok = grpc_go(a.grpc, &server_name, &b).await;
    assert_eq!(ok["ok"], true, "{ok}");
    let denied = grpcio(a.grpc, &server_name, &c, &[]).await;
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");
    let denied = grpc_go(a.grpc, &server_name, &c).await;
    assert_eq!(denied["code"], "PermissionDenied", "{denied}");

    // No certificate, one from another CA, and an expired one from the
    // operator's own CA, all with B's identity: refused in the handshake.
    let b_data = secret_data(&h, "b-tls").await;
    let none = Creds::write(tmp.path(), "none", &b_data["ca.crt"], None);
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/b");
    let names = vec!["b".to_owned()];
    let request = |duration| leaf::LeafRequest {
        dns_names: &names,
        spiffe_id: &spiffe,
        duration_seconds: duration,
        renew_before_seconds: 60,
        key_pem: None,
    };
    let other_ca = authority::generate_root("cluster.local", 86_400, now()).expect("another CA");
    let foreign = leaf::issue(&other_ca, &request(3600), now(), 0.0).expect("foreign leaf");
    let foreign = Creds::write(
        tmp.path(),
        "foreign",
        &b_data["ca.crt"],
        Some((foreign.cert_pem.as_bytes(), foreign.key_pem.as_bytes())),
    );
    let ca_data = secret_data(&h, "grpc-operator-ca").await;
    let ours = authority::parse(&ca_data, now()).expect("the operator's CA");
    let expired = leaf::issue(&ours.signer, &request(3600), now() - 7200, 0.0).expect("expired leaf");
    let expired = Creds::write(
        tmp.path(),
        "expired",
        &b_data["ca.crt"],
        Some((expired.cert_pem.as_bytes(), expired.key_pem.as_bytes())),
    );
    for (what, creds) in [("no certificate", &none), ("another CA", &foreign), ("expired", &expired)] {
        let refused = grpcio(a.grpc, &server_name, creds, &[]).await;
        assert_eq!(refused["ok"], false, "{what}: {refused}");
        assert_eq!(refused["code"], "UNAVAILABLE", "{what}: refused in the handshake: {refused}");
        let refused = grpc_go(a.grpc, &server_name, creds).await;
        assert_eq!(refused["ok"], false, "{what}: {refused}");
    }
    let metrics = a.metrics().await;
    assert!(metrics.contains("grpc_runtime_tls_handshake_failures_total"), "{metrics}");
    drop(a);
    h.shutdown().await;
}

#[tokio::test]
async fn allowed_clients_follow_the_named_services_identity_and_never_widen() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    let deny = "spiffe://cluster.local/grpc-operator/no-client";
    create(
        &h,
        &with_tls(
            "a",
            json!({"allowedClients": [{"name": "b"}, {"spiffeId": "spiffe://cluster.local/ns/ops/sa/*"}]}),
        ),
    )
    .await;
    let peers = |want: String| {
        let h = &h;
        async move {
            eventually(&format!("GRPC_ALLOWED_PEERS={want}"), || async {
                let env = container_env(h, "a").await;
                (env.get("GRPC_ALLOWED_PEERS") == Some(&want)).then_some(())
            })
            .await;
        }
    };
    // b does not exist: denied, and said so.
    let obj = h.wait_condition("a", "CertificateReady", "False", "AllowedClientUnresolved").await;
    assert!(
        condition(&obj, "CertificateReady").expect("c")["message"]
            .as_str()
            .expect("m")
            .contains(&format!("{ns}/b"))
    );
    peers("spiffe://cluster.local/ns/ops/sa/*".to_owned()).await;

    // b appears: resolved to its own account.
    create(&h, &sample("b")).await;
    h.wait_condition("a", "CertificateReady", "True", "Issued").await;
    peers(format!("spiffe://cluster.local/ns/{ns}/sa/b,spiffe://cluster.local/ns/ops/sa/*")).await;

    // b moves to a shared account that c also uses: a follows, and warns.
    create(&h, &{
        let mut c = sample("c");
        c.spec.service_account_name = Some("shared".into());
        c
    })
    .await;
    patch_spec(&h, "b", json!({"serviceAccountName": "shared"})).await;
    peers(format!("spiffe://cluster.local/ns/{ns}/sa/shared,spiffe://cluster.local/ns/ops/sa/*")).await;
    eventually("a SharedIdentity warning", || async {
        h.events().await.into_iter().find(|e| {
            e["reason"] == "SharedIdentity"
                && e["note"].as_str().is_some_and(|n| n.contains("b, c") || n.contains("c, b"))
        })
    })
    .await;

    // b is deleted: its last identity stays (never widened, never dropped
    // silently), and the condition says so.
    h.api::<GrpcService>().delete("b", &DeleteParams::default()).await.expect("delete b");
    h.wait_condition("a", "CertificateReady", "False", "AllowedClientUnresolved").await;
    peers(format!("spiffe://cluster.local/ns/{ns}/sa/shared,spiffe://cluster.local/ns/ops/sa/*")).await;

    // Only unresolved names left, none ever resolved: deny everyone.
    patch_spec(&h, "a", json!({"tls": {"allowedClients": [{"name": "nobody"}]}})).await;
    peers(deny.to_owned()).await;
    h.shutdown().await;
}

/// The CA Secret as the test found it, to put back.
async fn ca_secret(h: &Harness) -> Secret {
    let mut s = h.api::<Secret>().get("grpc-operator-ca").await.expect("CA Secret");
    s.metadata = kube::api::ObjectMeta {
        name: s.metadata.name.take(),
        labels: s.metadata.labels.take(),
        annotations: s.metadata.annotations.take(),
        ..Default::default()
    };
    s
}

#[tokio::test]
async fn a_deleted_or_corrupted_ca_is_never_replaced_and_no_leaf_is_touched_until_it_is_back() {
    let h = Harness::start().await;
    create(&h, &sample("a")).await;
    issued(&h, "a").await;
    let original = ca_secret(&h).await;
    let leaf_before = h.api::<Secret>().get("a-tls").await.expect("leaf");
    let secrets = h.api::<Secret>();

    secrets.delete("grpc-operator-ca", &DeleteParams::default()).await.expect("CA deleted");
    let obj = h.wait_condition("a", "CertificateReady", "False", "CAUnavailable").await;
    assert_eq!(condition(&obj, "Ready").expect("Ready")["reason"], "CAUnavailable");
    assert_eq!(h.trust.settings.ca_name, "grpc-operator-ca");
    // A change that would otherwise re-issue: the leaf still stays as it is.
    patch_spec(&h, "a", json!({"tls": {"dnsNames": ["extra.example.com"]}})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(secrets.get_opt("grpc-operator-ca").await.expect("get").is_none(), "no new CA was created");
    let leaf_now = secrets.get("a-tls").await.expect("leaf");
    assert_eq!(
        leaf_now.metadata.resource_version, leaf_before.metadata.resource_version,
        "the leaf is untouched"
    );
    assert_eq!(
        h.grpc_service("a").await.expect("a")["status"]["certificate"]["serialNumber"],
        leaf_before.metadata.annotations.clone().unwrap_or_default()["grpcoperator.io/serial"]
    );

    // Back: the pending change is applied.
    secrets.create(&PostParams::default(), &original).await.expect("CA restored");
    issued(&h, "a").await;
    eventually("the leaf is re-issued with the new name", || async {
        let s = secrets.get("a-tls").await.ok()?;
        (s.metadata.resource_version != leaf_before.metadata.resource_version).then_some(())
    })
    .await;
    let leaf_before = secrets.get("a-tls").await.expect("leaf");

    // Corrupted: a key that is not the certificate's.
    let other = authority::generate_root("cluster.local", 86_400, now()).expect("root");
    let patch = json!({"data": {"tls.key": ByteString(other.key_pem().into_bytes())}});
    secrets.patch("grpc-operator-ca", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("corrupt");
    let obj = h.wait_condition("a", "CertificateReady", "False", "CAUnavailable").await;
    let message = condition(&obj, "CertificateReady").expect("c")["message"].as_str().expect("m").to_owned();
    assert!(message.contains("tls.key does not belong to tls.crt"), "{message}");
    assert!(!message.contains("BEGIN"), "{message}");
    patch_spec(&h, "a", json!({"tls": {"dnsNames": ["other.example.com"]}})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secrets.get("a-tls").await.expect("leaf").metadata.resource_version,
        leaf_before.metadata.resource_version
    );
    let events = h.events().await;
    assert!(events.iter().any(|e| e["reason"] == "CAUnavailable" && e["type"] == "Warning"), "{events:?}");

    let original_key = original.data.as_ref().expect("data")["tls.key"].clone();
    let patch = json!({"data": {"tls.key": original_key}});
    secrets.patch("grpc-operator-ca", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("repair");
    issued(&h, "a").await;
    h.shutdown().await;
}

#[tokio::test]
async fn damaged_leaf_secrets_are_repaired_and_spec_changes_re_issue() {
    let h = Harness::start().await;
    create(&h, &with_tls("a", json!({"privateKeyRotation": "Never"}))).await;
    issued(&h, "a").await;
    let secrets = h.api::<Secret>();
    let serial =
        |s: &Secret| s.metadata.annotations.clone().unwrap_or_default()["grpcoperator.io/serial"].clone();
    let summary = |s: &Secret| {
        let data: BTreeMap<String, Vec<u8>> =
            s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        grpc_operator::pki::inspect::summarize(&data)
    };
    let mut current = secrets.get("a-tls").await.expect("leaf");
    let other = authority::generate_root("cluster.local", 86_400, now()).expect("root");
    let names = vec!["a".to_owned()];
    let foreign = leaf::issue(
        &other,
        &leaf::LeafRequest {
            dns_names: &names,
            spiffe_id: "spiffe://cluster.local/ns/x/sa/a",
            duration_seconds: 3600,
            renew_before_seconds: 60,
            key_pem: None,
        },
        now(),
        0.0,
    )
    .expect("foreign");
    let damages: Vec<(&str, Value)> = vec![
        // The API server insists on the key of a kubernetes.io/tls Secret
        // being present; it may be empty.
        ("a key emptied", json!({"data": {"tls.key": ""}})),
        ("a mismatched key", json!({"data": {"tls.key": ByteString(other.key_pem().into_bytes())}})),
        (
            "another issuer",
            json!({"data": {"tls.crt": ByteString(foreign.cert_pem.clone().into_bytes()), "tls.key": ByteString(foreign.key_pem.clone().into_bytes())}}),
        ),
    ];
    for (what, patch) in damages {
        let before = serial(&current);
        secrets.patch("a-tls", &PatchParams::default(), &Patch::Merge(&patch)).await.expect(what);
        current = eventually(&format!("repaired after {what}"), || async {
            let s = secrets.get("a-tls").await.ok()?;
            let sum = summary(&s);
            (serial(&s) != before && sum.damage.is_none() && sum.serial == serial(&s)).then_some(s)
        })
        .await;
        issued(&h, "a").await;
    }
    // One Warning Event per repair (published after the write).
    eventually("three repair Events", || async {
        let events = h.events().await;
        let repaired = events
            .iter()
            .filter(|e| {
                e["reason"] == "CertificateIssued"
                    && e["type"] == "Warning"
                    && e["note"].as_str().is_some_and(|n| n.contains("re-issued: the Secret"))
            })
            .count();
        (repaired >= 3).then_some(())
    })
    .await;

    // New names re-issue; with Never, the key is kept.
    let key_before = summary(&current).key;
    let serial_before = serial(&current);
    patch_spec(&h, "a", json!({"tls": {"dnsNames": ["api.example.com"]}})).await;
    let renamed = eventually("re-issued for the new name", || async {
        let s = secrets.get("a-tls").await.ok()?;
        (serial(&s) != serial_before).then_some(s)
    })
    .await;
    assert_eq!(summary(&renamed).key, key_before, "privateKeyRotation: Never keeps the key");
    // And with Always (the default) a new service account means a new
    // SPIFFE ID and a new key.
    patch_spec(&h, "a", json!({"serviceAccountName": "default", "tls": {"privateKeyRotation": null}})).await;
    let moved = eventually("re-issued for the new identity", || async {
        let s = secrets.get("a-tls").await.ok()?;
        (serial(&s) != serial(&renamed)).then_some(s)
    })
    .await;
    assert_ne!(summary(&moved).key, key_before);
    let text = String::from_utf8_lossy(&moved.data.clone().unwrap_or_default()["tls.crt"].0).into_owned();
    let der = grpc_operator::pki::pem_certificates(text.as_bytes()).expect("pem").remove(0);
    let ns = h.ns().to_owned();
    let want = format!("spiffe://cluster.local/ns/{ns}/sa/default");
    assert!(der.windows(want.len()).any(|w| w == want.as_bytes()), "the new SPIFFE ID");
    eventually("the operator's ServiceAccount is pruned", || async {
        h.api::<ServiceAccount>().get_opt("a").await.ok()?.is_none().then_some(())
    })
    .await;
    h.shutdown().await;
}

/// How long the soak tests call: 15 minutes, as the issue asks;
/// `GRPC_OPERATOR_SOAK_MINUTES` shortens it for a local run.
fn soak() -> Duration {
    let minutes =
        std::env::var("GRPC_OPERATOR_SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(15u64);
    Duration::from_secs(minutes * 60)
}

/// Totals of grpcio call loops.
#[derive(Default, Debug)]
struct Calls {
    calls: u64,
    failures: u64,
    errors: Vec<String>,
}

impl Calls {
    fn add(&mut self, loop_result: &Value) {
        self.calls += loop_result["calls"].as_u64().unwrap_or(0);
        self.failures += loop_result["failures"].as_u64().unwrap_or(0);
        for e in loop_result["errors"].as_array().into_iter().flatten() {
            if self.errors.len() < 10 {
                self.errors.push(e.to_string());
            }
        }
    }
}

/// Calls `target` in loops of `segment` (each a new channel, so a new TLS
/// handshake with the certificates of the moment), with the client's
/// credentials read afresh from `client` before each, until `done` says so.
async fn call_in_segments(
    target: std::net::SocketAddr,
    server_name: &str,
    client: &crate::workload::KubeletSync,
    segment: Duration,
    mut done: impl FnMut() -> bool,
) -> Calls {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut total = Calls::default();
    let seconds = segment.as_secs().to_string();
    while !done() {
        let creds = client.creds(tmp.path(), "client");
        let result = grpcio(
            target,
            server_name,
            &creds,
            &["--call", "loop", "--seconds", &seconds, "--interval-ms", "20"],
        )
        .await;
        total.add(&result);
    }
    total
}

#[tokio::test]
async fn renewals_under_load_cost_no_failed_call_and_use_a_new_key_each_time() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    create(&h, &sample("b")).await;
    // Renewed about every 4 minutes (1h certificates renewed 56 minutes early).
    create(&h, &with_tls("a", json!({"duration": "1h", "renewBefore": "56m"}))).await;
    issued(&h, "a").await;
    issued(&h, "b").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let a_volume =
        crate::workload::KubeletSync::start(&h, "a-tls", &tmp.path().join("a"), Duration::from_secs(1)).await;
    let b_volume =
        crate::workload::KubeletSync::start(&h, "b-tls", &tmp.path().join("b"), Duration::from_secs(1)).await;
    let a = Workload::start(&h, "a", &a_volume.dir).await;
    let end = std::time::Instant::now() + soak();
    let calls = call_in_segments(a.grpc, &format!("a.{ns}.svc"), &b_volume, Duration::from_secs(20), || {
        std::time::Instant::now() >= end
    })
    .await;
    let versions = a_volume.versions();
    let summaries: Vec<_> = versions.iter().map(grpc_operator::pki::inspect::summarize).collect();
    let renewals = summaries.len() - 1;
    eprintln!("renewal soak: {calls:?}, {renewals} renewals of a-tls");
    assert_eq!(calls.failures, 0, "failed calls across {renewals} renewals: {calls:?}");
    assert!(calls.calls > 1000, "{calls:?}");
    let minutes = soak().as_secs() / 60;
    assert!(renewals as u64 >= minutes / 5, "{renewals} renewals in {minutes} minutes");
    assert!(renewals as u64 <= minutes.max(1), "{renewals} renewals in {minutes} minutes: a re-issue loop");
    // Each renewal came at (or just after) the renewal time the previous
    // certificate announced, never before it.
    let announced = a_volume.renewal_times();
    for (k, next) in summaries.iter().enumerate().skip(1) {
        let due = ts(announced[k - 1].as_deref().expect("renewal-time annotation"));
        let issued_at = next.not_before + 300;
        assert!(
            issued_at >= due - 1 && issued_at <= due + 30,
            "renewal {k}: issued at {issued_at}, due at {due}"
        );
    }
    let keys: std::collections::BTreeSet<_> = summaries.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys.len(), summaries.len(), "a new key on every renewal (privateKeyRotation: Always)");
    assert!(summaries.iter().all(|s| s.damage.is_none()));
    let metrics = a.metrics().await;
    let reloads: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("grpc_runtime_tls_reloads_total") && l.contains("result=\"success\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(reloads >= renewals as f64, "the runtime reloaded each renewal: {reloads} reloads\n{metrics}");
    drop(a);
    h.shutdown().await;
}

#[tokio::test]
async fn a_ca_rotation_under_load_costs_no_failed_call_and_retires_the_old_root() {
    let mut h = Harness::without_controller().await;
    // Longer than the test kubelet's sync (1 s) plus the runtime's reload
    // poll (2 s): the delay the stages wait for.
    h.trust = grpc_operator::pki::trust::Trust::new(grpc_operator::pki::trust::PkiSettings {
        propagation_delay: Duration::from_secs(6),
        ..h.trust.settings.clone()
    });
    h.start_controller().await;
    let ns = h.ns().to_owned();
    create(&h, &with_tls("a", json!({"allowedClients": [{"name": "b"}]}))).await;
    create(&h, &with_tls("b", json!({"allowedClients": [{"name": "a"}]}))).await;
    issued(&h, "a").await;
    issued(&h, "b").await;
    let old_root =
        authority::parse(&secret_data(&h, "grpc-operator-ca").await, now()).expect("CA").signer.cert;

    let tmp = tempfile::tempdir().expect("tempdir");
    let sync = |name: &'static str| {
        let (h, dir) = (&h, tmp.path().join(name));
        async move {
            crate::workload::KubeletSync::start(h, &format!("{name}-tls"), &dir, Duration::from_secs(1)).await
        }
    };
    let (a_volume, b_volume) = (sync("a").await, sync("b").await);
    let a = Workload::start(&h, "a", &a_volume.dir).await;
    let b = Workload::start(&h, "b", &b_volume.dir).await;

    h.api::<Secret>()
        .patch(
            "grpc-operator-ca",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"grpcoperator.io/ca-rotate": "now"}}})),
        )
        .await
        .expect("rotation requested");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (secrets, done) = (h.api::<Secret>(), std::sync::Arc::clone(&done));
        let (a_dir, b_dir) = (a_volume.dir.clone(), b_volume.dir.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(ca) = secrets.get("grpc-operator-ca").await else { continue };
                let a = ca.metadata.annotations.clone().unwrap_or_default();
                let bundle = ca
                    .data
                    .clone()
                    .unwrap_or_default()
                    .get("ca.crt")
                    .map(|b| b.0.clone())
                    .unwrap_or_default();
                let finished = !a.contains_key("grpcoperator.io/ca-rotation-stage")
                    && !a.contains_key("grpcoperator.io/ca-rotate")
                    && grpc_operator::pki::pem_certificates(&bundle).map(|c| c.len()) == Ok(1);
                // Then the workloads' volumes carry the single root too.
                let volumes_done = [&a_dir, &b_dir].iter().all(|d| {
                    std::fs::read(d.join("ca.crt"))
                        .ok()
                        .and_then(|b| grpc_operator::pki::pem_certificates(&b).ok())
                        .is_some_and(|c| c.len() == 1)
                });
                if (finished && volumes_done) || started.elapsed() > Duration::from_secs(300) {
                    // One more round of calls with everything rotated.
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    let is_done = || done.load(std::sync::atomic::Ordering::SeqCst);
    let segment = Duration::from_secs(4);
    let (a_name, b_name) = (format!("a.{ns}.svc"), format!("b.{ns}.svc"));
    let secrets = h.api::<Secret>();
    let restart = async {
        // The operator restarts mid-rotation: the stage is read back from
        // the CA Secret, and nothing advances before its caches have listed.
        let started = std::time::Instant::now();
        loop {
            let stage = secrets.get("grpc-operator-ca").await.ok().and_then(|ca| {
                ca.metadata.annotations.unwrap_or_default().get("grpcoperator.io/ca-rotation-stage").cloned()
            });
            if stage.as_deref() == Some("propagating") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the rotation never reached stage 2");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h.stop_controller().await;
        h.start_controller().await;
    };
    let (a_calls, b_calls, ()) = tokio::join!(
        call_in_segments(a.grpc, &a_name, &b_volume, segment, is_done),
        call_in_segments(b.grpc, &b_name, &a_volume, segment, is_done),
        restart,
    );
    watcher.await.expect("watcher");
    eprintln!("CA rotation under load: b→a {a_calls:?}, a→b {b_calls:?}");
    assert_eq!(a_calls.failures + b_calls.failures, 0, "b→a {a_calls:?}, a→b {b_calls:?}");
    assert!(a_calls.calls > 100 && b_calls.calls > 100);

    // The old root is gone from every bundle, and every leaf is the new root's.
    let ca = authority::parse(&secret_data(&h, "grpc-operator-ca").await, now()).expect("CA");
    assert_ne!(ca.signer.cert.fingerprint, old_root.fingerprint, "a new root signs");
    assert_eq!(ca.bundle.len(), 1);
    for name in ["a-tls", "b-tls"] {
        let data = secret_data(&h, name).await;
        let bundle = grpc_operator::pki::pem_certificates(&data["ca.crt"]).expect("bundle");
        assert_eq!(bundle, vec![ca.signer.cert.der.clone()], "{name}: only the new root");
        assert_eq!(
            grpc_operator::pki::inspect::summarize(&data).issuer_key_id,
            ca.signer.cert.key_id,
            "{name}"
        );
    }
    let notes: Vec<String> = h
        .events()
        .await
        .into_iter()
        .filter(|e| e["reason"] == "CARotation")
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect();
    for stage in [
        "stage 1/4 (publishing)",
        "stage 2/4 (propagating)",
        "stage 3/4 (reissuing)",
        "stage 4/4 (retiring)",
        "rotation complete",
    ] {
        assert!(notes.iter().any(|n| n.contains(stage)), "{stage} missing from the Events: {notes:?}");
    }
    assert_eq!(h.metrics.ca_rotation_stage.get(), 0);
    drop((a, b));
    h.shutdown().await;
}

pub(crate) fn certificate_api(h: &Harness) -> kube::Api<kube::api::DynamicObject> {
    let ar = kube::discovery::ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    kube::Api::namespaced_with(h.client.clone(), h.ns(), &ar)
}

#[tokio::test]
async fn with_an_issuer_ref_cert_manager_issues_and_the_operator_mounts_its_secret() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    create(
        &h,
        &with_tls(
            "a",
            json!({"issuerRef": {"name": "company-ca", "kind": "ClusterIssuer"}, "duration": "2160h"}),
        ),
    )
    .await;
    // The real API server accepted the Certificate against cert-manager's CRDs.
    let certificates = certificate_api(&h);
    let cert =
        eventually("the Certificate", || async { certificates.get_opt("a").await.ok().flatten() }).await;
    let spec = &cert.data["spec"];
    assert_eq!(spec["secretName"], "a-tls");
    assert_eq!(
        spec["dnsNames"],
        json!(["a", format!("a.{ns}"), format!("a.{ns}.svc"), format!("a.{ns}.svc.cluster.local")])
    );
    assert_eq!(spec["uris"], json!([format!("spiffe://cluster.local/ns/{ns}/sa/a")]));
    assert_eq!(
        spec["issuerRef"],
        json!({"name": "company-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(spec["duration"], "2160h0m");
    assert_eq!(spec["privateKey"]["algorithm"], "ECDSA");
    h.wait_condition("a", "CertificateReady", "False", "CertificatePending").await;
    let dep = h.deployment("a").await.expect("Deployment");
    let volumes = dep["spec"]["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "a-tls"), "{volumes:?}");
    assert!(
        h.api::<Secret>().get_opt("a-tls").await.expect("get").is_none(),
        "cert-manager writes the Secret, not the operator"
    );

    // Play cert-manager: a CA of the company, the Secret, the Ready condition.
    let company = authority::generate_root("cluster.local", 86_400, now()).expect("company CA");
    let names = vec![format!("a.{ns}.svc")];
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/a");
    let issued_leaf = leaf::issue(
        &company,
        &leaf::LeafRequest {
            dns_names: &names,
            spiffe_id: &spiffe,
            duration_seconds: 2160 * 3600,
            renew_before_seconds: 720 * 3600,
            key_pem: None,
        },
        now(),
        0.0,
    )
    .expect("leaf");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "a-tls", "annotations": {"cert-manager.io/certificate-name": "a"}},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": ByteString(issued_leaf.cert_pem.clone().into_bytes()),
            "tls.key": ByteString(issued_leaf.key_pem.clone().into_bytes()),
            "ca.crt": ByteString(company.cert.pem().into_bytes()),
        }
    }))
    .expect("Secret");
    h.api::<Secret>().create(&PostParams::default(), &secret).await.expect("cert-manager's Secret");
    let not_after = grpc_operator::pki::rfc3339(issued_leaf.info.not_after);
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "Certificate is up to date and has not expired"}],
        "notBefore": grpc_operator::pki::rfc3339(issued_leaf.info.not_before),
        "notAfter": not_after,
        "renewalTime": grpc_operator::pki::rfc3339(issued_leaf.info.renewal),
    }});
    certificates
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("cert-manager's status");
    let ready = h.wait_condition("a", "CertificateReady", "True", "Issued").await;
    assert_eq!(ready["status"]["certificate"]["notAfter"], not_after);

    // The workload, wired as the operator applied it, serves that Secret.
    let tmp = tempfile::tempdir().expect("tempdir");
    let _volume = SecretVolume::create(&tmp.path().join("a"), &secret_data(&h, "a-tls").await);
    let a = Workload::start(&h, "a", &tmp.path().join("a")).await;
    let client_names = vec!["client".to_owned()];
    let client = leaf::issue(
        &company,
        &leaf::LeafRequest {
            dns_names: &client_names,
            spiffe_id: &format!("spiffe://cluster.local/ns/{ns}/sa/web"),
            duration_seconds: 3600,
            renew_before_seconds: 60,
            key_pem: None,
        },
        now(),
        0.0,
    )
    .expect("client leaf");
    let creds = Creds::write(
        tmp.path(),
        "web",
        company.cert.pem().as_bytes(),
        Some((client.cert_pem.as_bytes(), client.key_pem.as_bytes())),
    );
    let ok = grpcio(a.grpc, &format!("a.{ns}.svc"), &creds, &[]).await;
    assert_eq!(ok["ok"], true, "{ok}");
    drop(a);

    // Back to the operator's CA: cert-manager's Secret is not the operator's
    // to take over; once the user deletes it, the Certificate is pruned and
    // the operator issues its own.
    patch_spec(&h, "a", json!({"tls": {"issuerRef": null}})).await;
    let blocked = h.wait_condition("a", "Synced", "False", "NotOwned").await;
    let message = condition(&blocked, "Synced").expect("Synced")["message"].as_str().expect("m").to_owned();
    assert!(message.contains("Secret") && message.contains("a-tls"), "{message}");
    h.api::<Secret>().delete("a-tls", &DeleteParams::default()).await.expect("the old Secret deleted");
    h.wait_condition("a", "Synced", "True", "ReconcileSucceeded").await;
    issued(&h, "a").await;
    eventually("the Certificate is pruned", || async {
        certificates.get_opt("a").await.ok()?.is_none().then_some(())
    })
    .await;
    h.shutdown().await;
}

/// Puts cert-manager's CRDs back when dropped, even after a failed assertion.
struct ReinstallCertManager(&'static grpc_operator_testkit::TestCluster);

impl Drop for ReinstallCertManager {
    fn drop(&mut self) {
        let dir = self.0.info().cert_manager_crds.display().to_string();
        let _ = self.0.kubectl(&["apply", "--server-side", "-f", &dir], None);
        let _ = self.0.wait_established(&["crd/certificates.cert-manager.io"]);
    }
}

#[tokio::test]
async fn without_cert_managers_crds_certificate_ready_says_so_until_they_are_installed() {
    let mut h = Harness::exclusive().await;
    let reinstall = ReinstallCertManager(h.cluster);
    h.cluster
        .kubectl(&["delete", "crd", "certificates.cert-manager.io", "--wait=true"], None)
        .expect("cert-manager's Certificate CRD removed");
    h.start_controller().await;
    create(&h, &with_tls("a", json!({"issuerRef": {"name": "company-ca"}}))).await;
    let obj = h.wait_condition("a", "CertificateReady", "False", "CRDNotInstalled").await;
    let message = condition(&obj, "CertificateReady").expect("c")["message"].as_str().expect("m").to_owned();
    assert!(message.contains("cert-manager.io/v1"), "{message}");
    // Installed later: the Certificate is created without a restart.
    drop(reinstall);
    let certificates = certificate_api(&h);
    eventually("the Certificate once the CRD is back", || async {
        certificates.get_opt("a").await.ok().flatten()
    })
    .await;
    h.wait_condition("a", "CertificateReady", "False", "CertificatePending").await;
    h.shutdown().await;
}
