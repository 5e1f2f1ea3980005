//! CPU cost of the operator's PKI: issuing workload certificates (a new
//! ECDSA P-256 key, a certificate signed by the CA, PEM encoding) and
//! reading a leaf Secret back into the cache's summary, as the operator does
//! for every Secret its watch delivers.
//!
//! ```sh
//! cargo run --release --example pki-bench -- --leaves 1000
//! ```
//!
//! CPU time is the process's user + system time from `/proc/self/stat`,
//! measured around each phase on one thread.

use std::collections::BTreeMap;
use std::time::Instant;

use grpc_operator::pki::authority::generate_root;
use grpc_operator::pki::inspect::summarize;
use grpc_operator::pki::leaf::{LeafRequest, issue};

fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    });
    ticks.map_or(f64::NAN, |t| t / 100.0)
}

fn main() -> anyhow::Result<()> {
    let mut leaves = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--leaves" => leaves = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}; use --leaves N"),
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let ca = generate_root("cluster.local", 10 * 365 * 86_400, now)?;
    let names: Vec<Vec<String>> = (0..leaves)
        .map(|i| {
            let n = format!("svc-{i:04}");
            vec![
                n.clone(),
                format!("{n}.bench"),
                format!("{n}.bench.svc"),
                format!("{n}.bench.svc.cluster.local"),
            ]
        })
        .collect();
    let ids: Vec<String> =
        (0..leaves).map(|i| format!("spiffe://cluster.local/ns/bench/sa/svc-{i:04}")).collect();

    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut issued = Vec::with_capacity(leaves);
    for i in 0..leaves {
        let request = LeafRequest {
            dns_names: &names[i],
            spiffe_id: &ids[i],
            duration_seconds: 720 * 3600,
            renew_before_seconds: 240 * 3600,
            key_pem: None,
        };
        issued.push(issue(&ca, &request, now, 0.5)?);
    }
    let (issue_cpu, issue_wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());

    let bundle = ca.cert.pem().into_bytes();
    let secrets: Vec<BTreeMap<String, Vec<u8>>> = issued
        .iter()
        .map(|l| {
            BTreeMap::from([
                ("tls.crt".to_owned(), l.cert_pem.clone().into_bytes()),
                ("tls.key".to_owned(), l.key_pem.clone().into_bytes()),
                ("ca.crt".to_owned(), bundle.clone()),
            ])
        })
        .collect();
    let (cpu1, wall1) = (cpu_seconds(), Instant::now());
    let mut damaged = 0;
    for s in &secrets {
        damaged += usize::from(summarize(s).damage.is_some());
    }
    let (read_cpu, read_wall) = (cpu_seconds() - cpu1, wall1.elapsed().as_secs_f64());
    anyhow::ensure!(damaged == 0, "{damaged} issued leaves read back as damaged");

    println!("| phase ({leaves} leaves) | CPU | wall | CPU per leaf |");
    println!("|---|---|---|---|");
    println!(
        "| issue (new P-256 key, sign, PEM) | {issue_cpu:.2} s | {issue_wall:.2} s | {:.2} ms |",
        issue_cpu * 1000.0 / leaves as f64
    );
    println!(
        "| read back into the cache summary (parse, key check) | {read_cpu:.2} s | {read_wall:.2} s | {:.2} ms |",
        read_cpu * 1000.0 / leaves as f64
    );
    Ok(())
}
