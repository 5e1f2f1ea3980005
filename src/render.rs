//! `grpc-operator render`: the children the controller would apply, computed
//! offline from GrpcService manifests with the same validate and desired code.
//!
//! Differences from the controller, by necessity: no uid exists yet, so the
//! children carry no ownerReference; a manifest without a namespace renders
//! into `default`, as `kubectl apply` would place it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::GrpcService;
use crate::children::{self, Registry};
use crate::pki::trust::{PkiSettings, Trust};
use crate::reconcile::validate::{self, Origin};

/// Where manifests are read from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file, or every `.yaml`, `.yml` and `.json` file below a directory
    /// (sorted, so the output is deterministic).
    Path(PathBuf),
    /// Standard input.
    Stdin,
}

impl Source {
    /// `-` means standard input.
    pub fn parse(arg: &str) -> Self {
        if arg == "-" { Self::Stdin } else { Self::Path(PathBuf::from(arg)) }
    }
}

/// One problem with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderProblem {
    /// The file (`-` for standard input).
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// `namespace/name` of the GrpcService, when known.
    pub object: Option<String>,
    /// Field path, when the problem is about one field.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for RenderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(o) = &self.object {
            write!(f, " (GrpcService {o})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// Rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Some input could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Some manifests are invalid; nothing is printed.
    #[error("{} invalid manifest(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RenderProblem>),
    /// No GrpcService was found in the input.
    #[error("no GrpcService (apiVersion grpcoperator.io/v1alpha1) found in the input")]
    Empty,
    /// The output could not be serialized.
    #[error("failed to serialize the rendered objects")]
    Serialize(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The operator settings `render` needs: the PKI domains (`--trust-domain`,
/// `--cluster-domain`) and the sidecar image (`--envoy-image`).
#[derive(Clone, Debug)]
pub struct RenderSettings {
    /// Trust and cluster domains.
    pub pki: PkiSettings,
    /// The gRPC-Web sidecar's default image.
    pub envoy_image: String,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            pki: PkiSettings::default(),
            envoy_image: crate::children::envoy_config::DEFAULT_ENVOY_IMAGE.to_owned(),
        }
    }
}

/// Renders every GrpcService in `sources` into a multi-document YAML stream
/// of its children. Either every manifest is valid and the whole stream is
/// returned, or nothing is and every problem is reported.
pub fn render(sources: &[Source], settings: &RenderSettings) -> Result<String, RenderError> {
    let mut inputs = Vec::new();
    for source in sources {
        match source {
            Source::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|source| RenderError::Read { path: "-".into(), source })?;
                inputs.push(("-".to_owned(), text));
            }
            Source::Path(p) => {
                for file in manifest_files(p)? {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|source| RenderError::Read { path: file.display().to_string(), source })?;
                    inputs.push((file.display().to_string(), text));
                }
            }
        }
    }
    render_texts_with(&inputs, settings)
}

/// Renders `(file name, content)` pairs; see [`render`].
pub fn render_texts(inputs: &[(String, String)]) -> Result<String, RenderError> {
    render_texts_with(inputs, &RenderSettings::default())
}

/// [`render_texts`] for an operator run with `pki`'s trust and cluster
/// domains (`--trust-domain`, `--cluster-domain`).
pub fn render_texts_with(
    inputs: &[(String, String)],
    settings: &RenderSettings,
) -> Result<String, RenderError> {
    let trust = Trust::offline(settings.pki.clone());
    let registry = Registry::configured(std::sync::Arc::clone(&trust), settings.envoy_image.clone());
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    let mut parsed = Vec::new();
    for (file, text) in inputs {
        let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(RenderProblem {
                    file: file.clone(),
                    document: 1,
                    object: None,
                    field: None,
                    reason: format!("not valid YAML: {e}"),
                });
                continue;
            }
        };
        parsed.push((file, docs));
    }
    // Every GrpcService of the input, so that `allowedClients` entries naming
    // one of them resolve as the controller would resolve them.
    let all: Vec<std::sync::Arc<GrpcService>> = parsed
        .iter()
        .flat_map(|(_, docs)| docs.iter())
        .filter(|d| is_grpc_service(d))
        .filter_map(|d| parse_grpc_service(d.clone()).ok())
        .map(|(mut obj, _)| {
            if obj.metadata.namespace.as_deref().is_none_or(str::is_empty) {
                obj.metadata.namespace = Some("default".to_owned());
            }
            std::sync::Arc::new(obj)
        })
        .collect();
    for (file, docs) in parsed {
        for (i, doc) in docs.into_iter().enumerate() {
            match render_document(doc, &all, &registry, &trust) {
                Ok(children) => objects.extend(children),
                Err(mut ps) => {
                    for p in &mut ps {
                        p.file.clone_from(file);
                        p.document = i + 1;
                    }
                    problems.extend(ps);
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(RenderError::Invalid(problems));
    }
    if objects.is_empty() {
        return Err(RenderError::Empty);
    }
    let mut out = String::new();
    for obj in &objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(obj).map_err(|e| RenderError::Serialize(Box::new(e)))?);
    }
    Ok(out)
}

fn is_grpc_service(doc: &Value) -> bool {
    doc.get("apiVersion").and_then(Value::as_str) == Some("grpcoperator.io/v1alpha1")
        && doc.get("kind").and_then(Value::as_str) == Some("GrpcService")
}

/// Children of one YAML document; other kinds render to nothing.
fn render_document(
    doc: Value,
    all: &[std::sync::Arc<GrpcService>],
    registry: &Registry,
    trust: &Trust,
) -> Result<Vec<Value>, Vec<RenderProblem>> {
    if doc.is_null() || !is_grpc_service(&doc) {
        return Ok(Vec::new());
    }
    let object = object_name(&doc);
    let problem = |field: Option<String>, reason: String| RenderProblem {
        file: String::new(),
        document: 0,
        object: object.clone(),
        field,
        reason,
    };
    let (obj, unknown) = parse_grpc_service(doc).map_err(|(field, reason)| vec![problem(field, reason)])?;
    let mut problems: Vec<RenderProblem> =
        unknown.into_iter().map(|f| problem(Some(f), "unknown field".to_owned())).collect();
    match validate::validate(&obj, Origin::Manifest) {
        Err(invalid) => problems.extend(invalid.errors.into_iter().map(|e| problem(Some(e.path), e.reason))),
        Ok(valid) if problems.is_empty() => {
            // Every kind the operator manages, optional ones included: render
            // cannot know which CRDs the cluster serves.
            let observed = crate::children::tls_secret::render_observed(&valid, all, trust);
            return children::desired(registry, &valid, &observed)
                .map(|d| d.children.into_iter().filter_map(|c| c.object).collect())
                .map_err(|e| vec![problem(None, format!("failed to build the children: {e}"))]);
        }
        Ok(_) => {}
    }
    Err(problems)
}

fn object_name(doc: &Value) -> Option<String> {
    let meta = doc.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str)?;
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

/// Deserializes a GrpcService, reporting the path of a mistyped field, and
/// returns the unknown `spec` fields: a typo such as `replica:` would
/// otherwise be silently dropped and the preview would not match the
/// author's intent.
fn parse_grpc_service(doc: Value) -> Result<(GrpcService, Vec<String>), (Option<String>, String)> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(&doc, &mut on_unknown);
    let parsed: Result<GrpcService, _> = serde_path_to_error::deserialize(de);
    let obj = parsed.map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { None } else { Some(path) }, e.into_inner().to_string())
    })?;
    // `metadata` and `status` are free-form as far as rendering is concerned.
    unknown.retain(|p| p.starts_with("spec."));
    Ok((obj, unknown))
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let read_err = |source| RenderError::Read { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| RenderError::Read { path: dir.display().to_string(), source })?;
        for entry in entries {
            let entry =
                entry.map_err(|source| RenderError::Read { path: dir.display().to_string(), source })?;
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_file() -> String {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples").display().to_string()
    }

    #[test]
    fn sample_renders_to_a_deployment_a_service_and_a_disruption_budget() {
        let out = render(&[Source::Path(sample_file().into())], &RenderSettings::default()).expect("renders");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = render(&[Source::Path(sample_file().into())], &RenderSettings::default()).expect("renders");
        let b = render(&[Source::Path(sample_file().into())], &RenderSettings::default()).expect("renders");
        assert_eq!(a, b);
    }

    #[test]
    fn other_kinds_are_ignored_and_every_document_is_rendered() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
            apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: a, namespace: shop}\nspec: {image: i, services: [a.v1.A]}\n---\n\
            apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: b}\nspec: {image: i, services: [b.v1.B]}\n";
        let out = render_texts(&[("in.yaml".into(), text.into())]).expect("renders");
        assert_eq!(out.matches("kind: Deployment").count(), 2);
        assert_eq!(out.matches("kind: Service\n").count(), 2);
        assert!(out.contains("namespace: shop") && out.contains("namespace: default"));
        assert!(!out.contains("ConfigMap"));
    }

    #[test]
    fn invalid_manifest_names_file_document_object_and_field() {
        let text = "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: ok, namespace: shop}\nspec: {image: i, services: [a.v1.A]}\n---\n\
            apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: bad, namespace: shop}\nspec: {image: i, replicas: 1001, services: [a.v1.A], replica: 2}\n";
        let err = render_texts(&[("svc.yaml".into(), text.into())]).expect_err("invalid");
        let RenderError::Invalid(problems) = &err else { panic!("unexpected error {err}") };
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "svc.yaml: document 2 (GrpcService shop/bad): spec.replica: unknown field",
                "svc.yaml: document 2 (GrpcService shop/bad): spec.replicas: Invalid value: 1001: must be between 0 and 1000",
            ]
        );
    }

    #[test]
    fn mistyped_field_reports_its_path() {
        let text = "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: a}\nspec: {image: i, replicas: three, services: [a.v1.A]}\n";
        let err = render_texts(&[("a.yaml".into(), text.into())]).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("a.yaml: document 1 (GrpcService default/a): spec.replicas: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn input_without_grpc_services_is_an_error() {
        let err = render_texts(&[("a.yaml".into(), "apiVersion: v1\nkind: ConfigMap\n".into())])
            .expect_err("empty");
        assert!(matches!(err, RenderError::Empty));
    }
}
