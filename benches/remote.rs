//! Remote cache throughput: one big file output pushed to a remote and pulled back into an empty
//! cache with pipe's own transfer code ([`pipe::remote::Remote::push`] / [`Remote::pull`]: 32 MiB
//! parts, 4 in flight, every byte hashed on the way in), as `pipe run` does after a node runs and
//! when another checkout needs its outputs.
//!
//! Each repetition writes new pseudo-random bytes (so nothing is skipped as already present),
//! publishes them in a local cache, pushes (timed), pulls into a fresh cache (timed) and checks
//! the pulled object hashes to its name.
//!
//! usage: PIPE_BENCH_REMOTE=s3://BUCKET/PREFIX AWS_ENDPOINT_URL=http://127.0.0.1:PORT \
//!        AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. cargo bench --bench remote
//!        (scripts/bench-remote.sh starts an s3s-fs server and runs this beside dvc and boto3)
//! env: PIPE_BENCH_MIB (default 1024), PIPE_BENCH_REPS (default 3),
//!      PIPE_BENCH_DIR (default target/bench-remote; on a real disk).

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use pipe::cache::{RunFacts, Store};
use pipe::hash::KeyParts;
use pipe::remote::{Mode, Remote, RemoteConfig};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let Ok(url) = std::env::var("PIPE_BENCH_REMOTE") else {
        eprintln!("PIPE_BENCH_REMOTE is not set (s3://BUCKET/PREFIX or file:///PATH); see scripts/bench-remote.sh");
        return;
    };
    let mib: u64 = env_or("PIPE_BENCH_MIB", 1024);
    let reps: u64 = env_or("PIPE_BENCH_REPS", 3);
    let dir = std::path::PathBuf::from(std::env::var("PIPE_BENCH_DIR").unwrap_or_else(|_| "target/bench-remote".into()));
    let remote = Remote::open(&RemoteConfig { url: url.clone(), mode: Mode::Require, key: None }).expect("remote opens");
    let bytes = mib << 20;
    let mb = bytes as f64 / 1e6;
    println!("remote {url}, object {mib} MiB, {reps} repetitions");
    println!("| rep | push s | push MB/s | pull s | pull MB/s |");
    println!("|---|---|---|---|---|");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let _ = std::fs::remove_dir_all(&dir);
        let a = Store::open(&dir.join("a")).expect("cache a");
        let parts = KeyParts {
            kind: "bench".into(),
            version: rep as u32 + 1,
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            extra: BTreeMap::from([("seed".to_string(), format!("{rep}-{}", std::process::id()))]),
        };
        let key = parts.key();
        let staging = a.staging(&key).expect("staging");
        common::write_random_file(&staging.join("blob"), bytes, rep + u64::from(std::process::id())).expect("write");
        let rec = a.publish(&key, "bench", &parts, &staging, &[("blob", false)], RunFacts::default()).expect("publish");
        let t = Instant::now();
        let pushed = remote.push(&a, &rec, &|_, _| {}).expect("push");
        let push_s = t.elapsed().as_secs_f64();
        assert!(pushed.bytes >= bytes, "the object was uploaded, not skipped: {pushed:?}");
        let b = Store::open(&dir.join("b")).expect("cache b");
        let fetched = remote.record(&key).expect("read").expect("the record is there");
        let t = Instant::now();
        remote.pull(&b, &fetched, &|_, _| {}).expect("pull");
        let pull_s = t.elapsed().as_secs_f64();
        let d = &rec.outputs["blob"].digest;
        assert_eq!(&pipe::hash::hash_file(&b.object_path(d)).expect("hash"), d);
        println!("| {} | {push_s:.2} | {:.0} | {pull_s:.2} | {:.0} |", rep + 1, mb / push_s, mb / pull_s);
        up.push(mb / push_s);
        down.push(mb / pull_s);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("median: push {:.0} MB/s, pull {:.0} MB/s", median(&mut up), median(&mut down));
    let _ = std::fs::remove_dir_all(&dir);
}
