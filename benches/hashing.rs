//! Hashing benchmark: cold and warm hashing of a 1 GiB file through `pipe::hash`.
//!
//! | row | what is timed |
//! |---|---|
//! | cold | `pipe::hash::hash_file` right after the file's pages were evicted from the page cache |
//! | cold, sequential reader | the same bytes through `blake3::Hasher::update_reader` (one thread, `read()`), for comparison |
//! | page cache | `hash_file` again while the file is fully resident (re-hash of a hot file) |
//! | stat cache | a second `StatCache::file_digest` lookup (file aged > 2 s with `File::set_modified`), served without reading the file |
//! | stat cache incl. load | the same plus `StatCache::load` of the stat-cache JSON |
//!
//! Eviction: `sync` then `echo 3 > /proc/sys/vm/drop_caches` (needs root); otherwise
//! `posix_fadvise(POSIX_FADV_DONTNEED)` on the file; the fraction of the file still resident
//! (`mincore`) is printed with each cold sample, so a "cold" number that was not cold shows.
//!
//! usage: cargo bench --bench hashing
//! env: PIPE_BENCH_DIR (default target/bench-hashing; must be on a real disk, not tmpfs),
//!      PIPE_BENCH_MIB (default 1024), PIPE_BENCH_REPS (default 5), PIPE_BENCH_JSON (write results here).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

mod common;

use pipe::hash::hash_file;
use pipe::hash::statcache::StatCache;

extern "C" {
    fn sync();
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
    fn mincore(addr: *mut std::ffi::c_void, length: usize, vec: *mut u8) -> i32;
    fn sysconf(name: i32) -> i64;
}
const POSIX_FADV_DONTNEED: i32 = 4;
const SC_PAGESIZE: i32 = 30;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `bytes` of deterministic pseudo-random data, then fsyncs.
fn write_file(path: &Path, bytes: u64) -> std::io::Result<()> {
    common::write_random_file(path, bytes, 0)
}

/// Evicts the file from the page cache; returns the method that worked.
fn evict(path: &Path) -> &'static str {
    use std::os::unix::io::AsRawFd;
    unsafe { sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        return "drop_caches";
    }
    if let Ok(f) = File::open(path) {
        if unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) } == 0 {
            return "posix_fadvise(DONTNEED)";
        }
    }
    "none (first read after write)"
}

/// Fraction of the file's pages resident in the page cache.
fn resident(path: &Path) -> f64 {
    let Ok(f) = File::open(path) else { return f64::NAN };
    let Ok(map) = (unsafe { memmap2::Mmap::map(&f) }) else { return f64::NAN };
    let page = unsafe { sysconf(SC_PAGESIZE) }.max(4096) as usize;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    if unsafe { mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) } != 0 {
        return f64::NAN;
    }
    vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    name: &'static str,
    samples_ms: Vec<f64>,
    note: String,
}

fn main() {
    let dir = PathBuf::from(std::env::var("PIPE_BENCH_DIR").unwrap_or_else(|_| "target/bench-hashing".into()));
    let mib: u64 = env_or("PIPE_BENCH_MIB", 1024);
    let reps: usize = env_or("PIPE_BENCH_REPS", 5).max(1);
    let bytes = mib << 20;
    std::fs::create_dir_all(&dir).expect("creating the bench folder");
    let path = dir.join("big.bin");
    let t = Instant::now();
    write_file(&path, bytes).expect("writing the test file");
    eprintln!("wrote {} ({} MiB) in {:.0} ms", path.display(), mib, ms(t.elapsed()));

    let mut rows = Vec::new();
    let mut digest: Option<String> = None;
    let mut check = |d: String| match &digest {
        None => digest = Some(d),
        Some(x) => assert_eq!(x, &d, "every method must give the same digest"),
    };

    // Cold: evict, then hash_file (>= 4 MiB: blake3 update_mmap_rayon).
    let mut samples = Vec::new();
    let mut method = "";
    let mut res = Vec::new();
    for _ in 0..reps {
        method = evict(&path);
        res.push(resident(&path));
        let t = Instant::now();
        let d = hash_file(&path).expect("hashing");
        samples.push(ms(t.elapsed()));
        check(d);
    }
    let max_res = res.iter().cloned().fold(0.0, f64::max);
    eprintln!("cold samples (ms): {samples:.1?}; eviction: {method}; resident before each: {res:.3?}");
    rows.push(Row {
        name: "cold: hash_file (mmap + rayon)",
        samples_ms: samples,
        note: format!("evicted with {method}; max {:.1}% resident before", max_res * 100.0),
    });

    // Cold, single-threaded sequential read, for comparison with the mmap path.
    let mut samples = Vec::new();
    for _ in 0..reps {
        evict(&path);
        let t = Instant::now();
        let mut h = blake3::Hasher::new();
        h.update_reader(File::open(&path).unwrap()).unwrap();
        samples.push(ms(t.elapsed()));
        check(h.finalize().to_hex().to_string());
    }
    eprintln!("cold sequential samples (ms): {samples:.1?}");
    rows.push(Row {
        name: "cold: blake3 update_reader (1 thread, read())",
        samples_ms: samples,
        note: "comparison only, not what pipe does".into(),
    });

    // Page cache hot: the file is resident now.
    hash_file(&path).unwrap();
    let r = resident(&path);
    let mut samples = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let d = hash_file(&path).unwrap();
        samples.push(ms(t.elapsed()));
        check(d);
    }
    eprintln!("page-cache samples (ms): {samples:.1?}");
    rows.push(Row {
        name: "page cache: hash_file (file resident)",
        samples_ms: samples,
        note: format!("{:.0}% resident", r * 100.0),
    });

    // Stat cache: age the file past the racy window, fill the cache once, then look it up again.
    let aged = SystemTime::now() - Duration::from_secs(60);
    File::options().write(true).open(&path).unwrap().set_modified(aged).unwrap();
    let db = dir.join("stat-cache.json");
    let _ = std::fs::remove_file(&db);
    let mut c = StatCache::load(&db);
    check(c.file_digest(&path).unwrap());
    assert_eq!(c.hashed, 1);
    c.save().unwrap();
    let (mut lookup, mut with_load) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(20) {
        let t0 = Instant::now();
        let mut c = StatCache::load(&db);
        let t1 = Instant::now();
        let d = c.file_digest(&path).unwrap();
        let t2 = Instant::now();
        assert_eq!(c.hashed, 0, "the second lookup must be served from the stat cache");
        check(d);
        lookup.push(ms(t2 - t1));
        with_load.push(ms(t2 - t0));
    }
    rows.push(Row {
        name: "warm: StatCache::file_digest (2nd lookup)",
        samples_ms: lookup,
        note: "served from the stat cache (hashed == 0)".into(),
    });
    rows.push(Row {
        name: "warm: StatCache::load + file_digest",
        samples_ms: with_load,
        note: "includes reading the stat-cache JSON".into(),
    });

    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!("| measurement ({mib} MiB file, {reps}+ samples) | median ms | min ms | GiB/s (median) | note |");
    println!("|---|---:|---:|---:|---|");
    let mut json = Vec::new();
    for r in &rows {
        let med = median(&r.samples_ms);
        let min = r.samples_ms.iter().cloned().fold(f64::INFINITY, f64::min);
        let gbps = gib / (med / 1e3);
        let fmt_ms = if med < 1.0 { format!("{med:.4}") } else { format!("{med:.1}") };
        let fmt_min = if min < 1.0 { format!("{min:.4}") } else { format!("{min:.1}") };
        println!("| {} | {fmt_ms} | {fmt_min} | {gbps:.2} | {} |", r.name, r.note);
        json.push(format!(
            "{{\"name\":{:?},\"median_ms\":{med},\"min_ms\":{min},\"gib_per_s\":{gbps},\"samples_ms\":{:?},\"note\":{:?}}}",
            r.name, r.samples_ms, r.note
        ));
    }
    if let Ok(out) = std::env::var("PIPE_BENCH_JSON") {
        std::fs::write(&out, format!("{{\"bytes\":{bytes},\"digest\":{:?},\"rows\":[{}]}}\n", digest.unwrap(), json.join(",")))
            .expect("writing PIPE_BENCH_JSON");
    }
    if std::env::var_os("PIPE_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&db);
    }
}
