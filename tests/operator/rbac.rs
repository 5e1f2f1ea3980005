//! The operator's ClusterRole (`config/rbac/role.yaml`) is exactly what it
//! uses: a lifecycle run as its ServiceAccount, then its requests read back
//! from kube-apiserver's audit log and compared with the grants.

use std::collections::BTreeSet;

use grpc_operator::api::GrpcService;
use grpc_operator_testkit::audit::{self, Permission};
use grpc_operator_testkit::{Fault, FaultKind, OPERATOR_ACCOUNT, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{Harness, create, eventually, sample};

fn perm(group: &str, resource: &str, verb: &str) -> Permission {
    (group.to_owned(), resource.to_owned(), verb.to_owned())
}

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_operator_uses() {
    let h = Harness::start().await;
    // One failed apply, so that a ReconcileFailed Event is published, and a
    // conflict on the finalizer patch, so that the object is re-read.
    for (verb, resource, code) in [(Verb::Apply, "deployments", 500), (Verb::Patch, "grpcservices", 409)] {
        h.proxy.inject(Fault {
            verb: Some(verb),
            resource: Some(resource.into()),
            subresource: None,
            kind: FaultKind::Status(code),
            times: 1,
        });
    }
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    // Children carry blockOwnerDeletion, which OwnerReferencesPermissionEnforcement
    // (on in the test cluster) admits only with update on grpcservices/finalizers.
    let dep = h.deployment("user-service").await.expect("deployment");
    assert_eq!(dep["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);

    // Autoscaling on (an HPA is created, the budget stays for minReplicas 2),
    // changed (patched), then off (HPA and budget pruned: delete).
    let spec = |spec: serde_json::Value| json!({ "spec": spec });
    let grpc = h.api::<GrpcService>();
    let merge = |v| Patch::Merge(v);
    let on = spec(json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                          "resources": {"requests": {"cpu": "100m"}}}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&on)).await.expect("autoscaling on");
    let hpas = h.api::<HorizontalPodAutoscaler>();
    let hpa_max = |max: i32| {
        let hpas = hpas.clone();
        async move {
            let hpa = hpas.get_opt("user-service").await.ok().flatten()?;
            (hpa.spec.max_replicas == max).then_some(())
        }
    };
    eventually("HPA created", || hpa_max(4)).await;
    let changed = spec(json!({"autoscaling": {"maxReplicas": 5}}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&changed)).await.expect("autoscaling changed");
    eventually("HPA patched", || hpa_max(5)).await;
    let off = spec(json!({"autoscaling": null}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&off)).await.expect("autoscaling off");
    eventually("HPA and PDB pruned", || async {
        let hpa = h.api::<HorizontalPodAutoscaler>().get_opt("user-service").await.ok()?;
        let pdb = h.api::<PodDisruptionBudget>().get_opt("user-service").await.ok()?;
        (hpa.is_none() && pdb.is_none()).then_some(())
    })
    .await;

    // A template edit makes the operator read the whole Deployment and re-apply it.
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    let edit =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}});
    h.api::<Deployment>().patch("user-service", &params, &Patch::Strategic(&edit)).await.expect("edit");
    eventually("image restored", || async {
        let dep = h.deployment("user-service").await?;
        (dep["spec"]["template"]["spec"]["containers"][0]["image"] != "evil:latest").then_some(())
    })
    .await;

    h.api::<GrpcService>().delete("user-service", &DeleteParams::default()).await.expect("delete");
    eventually("GrpcService gone", || async { h.grpc_service("user-service").await.is_none().then_some(()) })
        .await;

    let user = format!("system:serviceaccount:{}:{OPERATOR_ACCOUNT}", h.ns());
    let log = h.cluster.info().audit_log.clone();
    let role = std::fs::read_to_string(grpc_operator_testkit::repo_root().join("config/rbac/role.yaml"))
        .expect("role.yaml");
    let granted = audit::permissions_granted(&role).expect("role parses");
    // Checked by admission on the children's ownerReferences, never requested
    // itself; the blockOwnerDeletion assertion above shows it was needed.
    // Likewise delete on Deployments and Services: checked when an orphan is
    // adopted (children_orphaned_by_a_cascade_orphan_delete_... fails without it).
    let admission_only: BTreeSet<Permission> = [
        perm("grpcoperator.io", "grpcservices/finalizers", "update"),
        perm("apps", "deployments", "delete"),
        perm("", "services", "delete"),
    ]
    .into();

    // The finalizer's addition (the proxy answered the first try itself) and
    // its removal: the last requests of the run.
    let (used, events) = eventually("the audit log shows the finalizer's removal", || async {
        let events = audit::events_of(&log, &user).ok()?;
        let finalizer_patches = events
            .iter()
            .filter(|e| {
                e.verb == "patch"
                    && e.object_ref
                        .as_ref()
                        .is_some_and(|o| o.resource == "grpcservices" && o.subresource.is_empty())
            })
            .count();
        (finalizer_patches >= 2).then(|| (audit::permissions_used(&events), events.len()))
    })
    .await;
    h.shutdown().await;

    let unused: Vec<_> = granted.difference(&used).filter(|p| !admission_only.contains(*p)).collect();
    let denied_or_ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        unused.is_empty() && denied_or_ungranted.is_empty(),
        "from {events} audit events of {user}:\ngranted but never used: {unused:?}\nused but not granted: {denied_or_ungranted:?}\nused: {used:?}"
    );
}
