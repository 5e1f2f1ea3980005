//! The JWT example's authenticator in the chain: tokens signed by a key of the issuer's JWKS
//! (served here) pass with their subject as the principal; expired, foreign-audience, unsigned
//! and unknown-key tokens are `UNAUTHENTICATED`; the JWKS is fetched once per refresh interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use tonic::Code;

use crate::harness::{TestServer, misbehaving_server};
use crate::jwt_authenticator::JwtAuthenticator;
use crate::service::pb::GetUserRequest;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "user-service";

/// A JWKS endpoint serving one P-256 key, counting fetches.
async fn jwks_server(
    key: &rcgen::KeyPair,
    kid: &str,
) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]})
    .to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let jwks = jwks.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, fetches, task)
}

fn token(key: &rcgen::KeyPair, kid: &str, sub: &str, aud: &str, exp_offset: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let claims =
        serde_json::json!({"sub": sub, "iss": ISSUER, "aud": aud, "exp": now + exp_offset, "iat": now});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key");
    jsonwebtoken::encode(&header, &claims, &signing).expect("sign")
}

async fn call(server: &TestServer, bearer: Option<&str>) -> Result<String, tonic::Status> {
    let mut client = server.client().await;
    let mut request = tonic::Request::new(GetUserRequest { user_id: -3 });
    if let Some(token) = bearer {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    // GetUser(-3) answers with the request context; its third field is the principal.
    client
        .get_user(request)
        .await
        .map(|r| r.into_inner().name.split('|').nth(2).unwrap_or_default().to_string())
}

#[tokio::test]
async fn jwt_bearer_tokens_are_checked_against_the_issuers_jwks() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let (url, fetches, jwks) = jwks_server(&key, "k1").await;
    let authenticator =
        JwtAuthenticator::new(url.parse().expect("url"), ISSUER, AUDIENCE).expect("authenticator");
    let server = TestServer::start(misbehaving_server().authenticator(authenticator)).await;

    // The first token's key is unknown: the JWKS is fetched, then the call proceeds.
    assert_eq!(
        call(&server, Some(&token(&key, "k1", "alice", AUDIENCE, 300))).await.expect("valid"),
        "alice"
    );
    assert_eq!(call(&server, Some(&token(&key, "k1", "bob", AUDIENCE, 300))).await.expect("valid"), "bob");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "a known key needs no fetch");

    for (name, bearer) in [
        ("expired", Some(token(&key, "k1", "alice", AUDIENCE, -600))),
        ("another audience", Some(token(&key, "k1", "alice", "billing", 300))),
        ("not a JWT", Some("not.a.jwt".to_string())),
        ("missing", None),
    ] {
        let status = call(&server, bearer.as_deref()).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    // Tokens under an unknown kid would make the authenticator refetch the JWKS (a rotation),
    // but it was fetched moments ago: within the refresh interval forged kids fetch nothing.
    let forger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    for _ in 0..5 {
        let status = call(&server, Some(&token(&forger, "forged", "mallory", AUDIENCE, 300)))
            .await
            .expect_err("forged");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "at most one fetch per refresh interval");
    // The forger's key under the real kid fails the signature check.
    let status = call(&server, Some(&token(&forger, "k1", "mallory", AUDIENCE, 300)))
        .await
        .expect_err("bad signature");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Health needs no token.
    let channel =
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health is exempt");
    server.stop().await;
    jwks.abort();
}
