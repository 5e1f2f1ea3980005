//! From a certificate Secret's update on the node to the runtime serving the
//! new certificate: the runtime's example server (`grpc-runtime`'s
//! `user-service`, TLS from a kubelet-style volume) gets a new certificate
//! by a `..data` swap, exactly as the kubelet writes a Secret volume, and a
//! fresh TLS handshake (`openssl s_client`) every 20 ms shows when it is
//! served.
//!
//! ```sh
//! cargo build --release -p grpc-runtime --example user-service
//! cargo run --release --example tls-reload-bench -- --swaps 20
//! ```
//!
//! The kubelet's own delay (its Secret cache and sync period, about a minute
//! by default) comes before this and is not the operator's or the runtime's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grpc_operator::pki::authority::generate_root;
use grpc_operator::pki::leaf::{LeafRequest, issue};

fn files(serial_dir: &Path, data: &BTreeMap<&str, String>) -> anyhow::Result<()> {
    std::fs::create_dir_all(serial_dir)?;
    for (k, v) in data {
        std::fs::write(serial_dir.join(k), v)?;
    }
    Ok(())
}

/// Swaps `..data` to `version` (atomic rename of a fresh link), as the kubelet does.
fn swap(dir: &Path, version: &str) -> anyhow::Result<()> {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

/// The serial of the certificate a fresh handshake presents, lower-case hex.
fn served_serial(port: u16) -> Option<String> {
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-alpn", "h2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    use std::io::Write as _;
    x509.stdin.take()?.write_all(&s_client.stdout).ok()?;
    let out = x509.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.trim().strip_prefix("serial=")?.to_lowercase())
}

fn main() -> anyhow::Result<()> {
    let mut swaps = 20usize;
    let mut server = PathBuf::from("target/release/examples/user-service");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--swaps" => swaps = args.next().unwrap_or_default().parse()?,
            "--server" => server = PathBuf::from(args.next().unwrap_or_default()),
            other => anyhow::bail!("unknown argument {other}; use --swaps N --server PATH"),
        }
    }
    anyhow::ensure!(
        server.exists(),
        "{} missing: cargo build --release -p grpc-runtime --example user-service",
        server.display()
    );
    let now = jiff::Timestamp::now().as_second();
    let ca = generate_root("cluster.local", 86_400, now)?;
    let names = vec!["localhost".to_owned()];
    let leaf = || {
        issue(
            &ca,
            &LeafRequest {
                dns_names: &names,
                spiffe_id: "spiffe://cluster.local/ns/bench/sa/server",
                duration_seconds: 3600,
                renew_before_seconds: 1200,
                key_pem: None,
            },
            now,
            0.0,
        )
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("tls");
    let write_version = |n: usize| -> anyhow::Result<String> {
        let l = leaf()?;
        let version = format!("..2026_11_30_00_00_00.{n}");
        let data =
            BTreeMap::from([("tls.crt", l.cert_pem), ("tls.key", l.key_pem), ("ca.crt", ca.cert.pem())]);
        files(&dir.join(&version), &data)?;
        Ok(version)
    };
    let first = write_version(0)?;
    swap(&dir, &first)?;
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(&server)
        .env_clear()
        .env("GRPC_PORT", port.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("TLS_MODE", "server")
        .env("TLS_DIR", &dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while served_serial(port).is_none() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut delays = Vec::with_capacity(swaps);
    let mut previous = first;
    for n in 1..=swaps {
        let version = write_version(n)?;
        let expected = grpc_operator::pki::inspect::summarize(
            &["tls.crt", "tls.key", "ca.crt"]
                .iter()
                .map(|f| Ok(((*f).to_owned(), std::fs::read(dir.join(&version).join(f))?)))
                .collect::<std::io::Result<BTreeMap<String, Vec<u8>>>>()?,
        )
        .serial;
        let t = Instant::now();
        swap(&dir, &version)?;
        let _ = std::fs::remove_dir_all(dir.join(&previous));
        previous = version;
        loop {
            if served_serial(port).as_deref() == Some(expected.as_str()) {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "swap {n} not served after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        delays.push(t.elapsed().as_secs_f64() * 1000.0);
        // Land the next swap at a different point of the reload poll.
        std::thread::sleep(Duration::from_millis(700));
    }
    let _ = child.kill();
    let _ = child.wait();
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    println!("| {swaps} `..data` swaps | median | p95 | max |");
    println!("|---|---|---|---|");
    println!(
        "| swap → new certificate served | {:.0} ms | {:.0} ms | {:.0} ms |",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    Ok(())
}
