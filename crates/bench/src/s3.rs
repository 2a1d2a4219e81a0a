//! `cloister-bench s3`: starts a private `cloister server` on a fresh data directory and
//! measures its S3 endpoint, as any S3 client sees it, next to the floor of the same disk
//! measured in the same run and the same file system: small PUT and GET latency, listing a
//! large bucket, large multipart PUT and GET throughput, and the server's memory while it lists
//! and streams.
//!
//! The benchmark talks only HTTP to the endpoint, so it measures whichever store the binary
//! named with `--cloister-bin` has, and two builds can be compared on one machine.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, Checksum};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use serde_json::json;

use crate::process::{CloisterBin, load_average, spinner, start_server};
use crate::stats::{Metrics, Target, ms, percentile};

const MIB: usize = 1024 * 1024;
/// The bucket the benchmark creates in its private server.
const BUCKET: &str = "bench-s3";
/// S3 refuses parts below 5 MiB (except the last), so a smaller part size would measure
/// something no real client can do.
const MIN_PART_MIB: usize = 5;
/// Keys per ListObjectsV2 page, the S3 default and maximum.
const PAGE_KEYS: usize = 1000;
/// The read buffer of the loopback floors' receiving ends.
const LOOPBACK_BUFFER: usize = MIB;
/// How often the server's resident memory is read while a phase runs.
const RSS_INTERVAL: Duration = Duration::from_millis(50);

/// Sizes of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Rounds; each measures the floor and the endpoint, interleaved, and the table shows the
    /// median of the rounds with their spread.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Sequential small PUTs (and as many GETs) per round.
    #[arg(long, default_value_t = 500)]
    pub small_ops: usize,
    /// Size of a small object, in KiB.
    #[arg(long, default_value_t = 4)]
    pub small_kib: usize,
    /// Keys in the listed bucket (0: skip the listing).
    #[arg(long, default_value_t = 100_000)]
    pub list_keys: usize,
    /// PUTs in flight while filling the listed bucket.
    #[arg(long, default_value_t = 32)]
    pub populate_concurrency: usize,
    /// Size of the large object, in MiB (0: skip the large PUT and GET).
    #[arg(long, default_value_t = 1024)]
    pub big_mib: usize,
    /// Multipart part size, in MiB (at least 5, as S3 requires).
    #[arg(long, default_value_t = 16)]
    pub part_mib: usize,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub parts_in_flight: usize,
    /// Sign each body with SHA-256 (and send no checksum), as an SDK does over plain http,
    /// instead of `UNSIGNED-PAYLOAD` with a CRC64NVME checksum, as SDKs do over https.
    #[arg(long)]
    pub sign_payload: bool,
    /// Where the temporary directory with the server's data and the floor's files goes (default:
    /// the system's temporary directory); both are on this one file system.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

impl S3Args {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.rounds >= 1, "--rounds must be at least 1");
        anyhow::ensure!(self.small_ops >= 1, "--small-ops must be at least 1");
        anyhow::ensure!(self.small_kib >= 1, "--small-kib must be at least 1");
        anyhow::ensure!(
            self.populate_concurrency >= 1,
            "--populate-concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.part_mib >= MIN_PART_MIB,
            "--part-mib must be at least {MIN_PART_MIB} (the S3 minimum)"
        );
        anyhow::ensure!(self.parts_in_flight >= 1, "--parts-in-flight must be at least 1");
        Ok(())
    }
}

pub async fn run(args: S3Args, json: bool) -> anyhow::Result<()> {
    args.validate()?;
    let cloister = args.cloister_bin.path()?;
    let root = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("cannot create a temporary directory")?;
    let data_dir = root.path().join("data");
    let floor_dir = root.path().join("floor");
    std::fs::create_dir_all(&floor_dir).context("cannot create the floor's directory")?;
    let load_before = load_average();

    let (server, client) = start_server(
        &cloister,
        &data_dir,
        &[OsStr::new("--log-limit-kib"), OsStr::new("64")],
    )
    .await?;
    let server_pid = server.0.id();
    client
        .system(
            reqwest::Method::POST,
            "/system/buckets",
            Some(&json!({"bucket_name": BUCKET})),
        )
        .await
        .context("cannot create the benchmark bucket")?;
    let store = Arc::new(s3_client(&client, args.sign_payload).await?);

    let small = random_bytes(args.small_kib * 1024);
    let part = Bytes::from(random_bytes(args.part_mib * MIB));
    let mut metrics = Metrics::default();
    let mut populate = None;

    for round in 0..args.rounds {
        let label = |what: &str| format!("round {}/{}: {what}", round + 1, args.rounds);

        let bar = spinner(json, &label("small PUTs next to write+fsync+rename"));
        let (floor, put) = small_puts(&store, &floor_dir, round, args.small_ops, &small).await?;
        bar.finish_and_clear();
        let bar = spinner(json, &label("small GETs next to file reads"));
        let (read_floor, get) = small_gets(&store, &floor_dir, round, args.small_ops, &small).await?;
        bar.finish_and_clear();
        record_small(&mut metrics, args.small_kib, &floor, &put, &read_floor, &get);

        if args.list_keys > 0 {
            if populate.is_none() {
                populate = Some(fill_bucket(&store, args.list_keys, args.populate_concurrency, json).await?);
            }
            let bar = spinner(json, &label(&format!("listing {} keys", args.list_keys)));
            let (listing, rss) = measure_rss(server_pid, list_all(&store, args.list_keys)).await?;
            let listing = listing?;
            bar.finish_and_clear();
            let secs = listing.elapsed.as_secs_f64().max(1e-9);
            metrics.record(
                "list_pages_per_s",
                "list: pages/s",
                "pages/s",
                listing.pages as f64 / secs,
            );
            metrics.record(
                "list_keys_per_s",
                "list: keys/s",
                "keys/s",
                listing.keys as f64 / secs,
            );
            record_rss(
                &mut metrics,
                ["list_rss_before_mib", "list_rss_peak_mib", "list_rss_after_mib"],
                "while listing",
                rss,
            );
        }

        if args.big_mib > 0 {
            let size = args.big_mib * MIB;
            let floor_file = floor_dir.join(format!("big-{round}"));
            let object = ObjectPath::from(format!("big/r{round}"));
            // Write-back left over from one phase (today's store acknowledges before its data is
            // on disk) would otherwise be paid by the next, whichever it is: settle it untimed.
            sync_file_system(root.path())?;
            let bar = spinner(
                json,
                &label(&format!("{} MiB sequential write + fsync", args.big_mib)),
            );
            let disk_write = write_sequential(&floor_file, &part, size)?;
            bar.finish_and_clear();
            sync_file_system(root.path())?;
            let bar = spinner(
                json,
                &label(&format!(
                    "{} MiB over loopback TCP, written + fsynced",
                    args.big_mib
                )),
            );
            let tcp_file = floor_dir.join(format!("big-{round}-tcp"));
            let cpu_before = cpu_seconds(std::process::id())?;
            let tcp_write = receive_over_loopback(&tcp_file, &part, size)?;
            let tcp_write_cpu = cpu_seconds(std::process::id())? - cpu_before;
            std::fs::remove_file(&tcp_file).context("cannot remove the loopback floor's file")?;
            bar.finish_and_clear();
            sync_file_system(root.path())?;
            let bar = spinner(json, &label(&format!("{} MiB multipart PUT", args.big_mib)));
            let (put, put_rss) = measure_rss(
                server_pid,
                put_big(&store, &object, &part, size, args.parts_in_flight),
            )
            .await?;
            let put = put?;
            bar.finish_and_clear();
            sync_file_system(root.path())?;
            let bar = spinner(json, &label(&format!("{} MiB sequential read", args.big_mib)));
            let disk_read = read_sequential(&floor_file, part.len())?;
            bar.finish_and_clear();
            anyhow::ensure!(disk_read.bytes == size as u64, "the floor file is short");
            let bar = spinner(
                json,
                &label(&format!("{} MiB sent over loopback TCP", args.big_mib)),
            );
            let cpu_before = cpu_seconds(std::process::id())?;
            let tcp_read = send_over_loopback(&floor_file)?;
            let tcp_read_cpu = cpu_seconds(std::process::id())? - cpu_before;
            bar.finish_and_clear();
            anyhow::ensure!(
                tcp_read.bytes == size as u64,
                "the loopback floor sent a short file"
            );
            let bar = spinner(json, &label(&format!("{} MiB GET", args.big_mib)));
            let (get, get_rss) = measure_rss(server_pid, get_big(&store, &object)).await?;
            let get = get?;
            bar.finish_and_clear();
            anyhow::ensure!(
                get.bytes == size as u64,
                "the GET returned {} bytes of {size}",
                get.bytes
            );
            std::fs::remove_file(&floor_file).context("cannot remove the floor file")?;
            store
                .delete(&object)
                .await
                .context("cannot delete the large object")?;
            record_big(
                &mut metrics,
                args.big_mib,
                Floors {
                    disk_write,
                    tcp_write,
                    disk_read,
                    tcp_read,
                },
                put,
                get,
            );
            let gib = args.big_mib as f64 / 1024.0;
            metrics.record_floor(
                "big_put_tcp_floor_cpu_s_per_gib",
                "  CPU per GiB of the loopback PUT floor (both ends)",
                "s",
                tcp_write_cpu / gib,
            );
            metrics.record_floor(
                "big_get_tcp_floor_cpu_s_per_gib",
                "  CPU per GiB of the loopback GET floor (both ends)",
                "s",
                tcp_read_cpu / gib,
            );
            record_cpu(
                &mut metrics,
                ["big_put_server_cpu_s_per_gib", "big_put_client_cpu_s_per_gib"],
                "PUT",
                args.big_mib,
                put_rss,
            );
            let md5_cpu = md5_seconds(&part, size) / gib;
            record_put_budget(&mut metrics, md5_cpu, tcp_write_cpu / gib, tcp_write.mib_per_s());
            record_cpu(
                &mut metrics,
                ["big_get_server_cpu_s_per_gib", "big_get_client_cpu_s_per_gib"],
                "GET",
                args.big_mib,
                get_rss,
            );
            record_rss(
                &mut metrics,
                [
                    "big_put_rss_before_mib",
                    "big_put_rss_peak_mib",
                    "big_put_rss_after_mib",
                ],
                "during the PUT",
                put_rss,
            );
            record_rss(
                &mut metrics,
                [
                    "big_get_rss_before_mib",
                    "big_get_rss_peak_mib",
                    "big_get_rss_after_mib",
                ],
                "during the GET",
                get_rss,
            );
        }
    }
    drop(server);
    let load_after = load_average();

    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    if json {
        let out = json!({
            "command": "s3",
            "cloister_bin": cloister.display().to_string(),
            "cpus": cpus,
            "load_average": {"before": load_before, "after": load_after},
            "rounds": args.rounds,
            "small_ops": args.small_ops,
            "small_kib": args.small_kib,
            "list_keys": args.list_keys,
            "page_keys": PAGE_KEYS,
            "big_mib": args.big_mib,
            "part_mib": args.part_mib,
            "parts_in_flight": args.parts_in_flight,
            "populate": populate.map(|p: Populate| json!({
                "keys": p.keys, "concurrency": args.populate_concurrency,
                "seconds": p.elapsed.as_secs_f64(),
                "puts_per_s": p.keys as f64 / p.elapsed.as_secs_f64().max(1e-9),
            })),
            "targets": Target::to_json(&targets(&metrics)),
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!(
        "cloister bench s3 — {cpus} CPUs, load {} before / {} after, {} rounds (median, min–max), server {}",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.rounds,
        cloister.display(),
    );
    if let Some(p) = &populate {
        println!(
            "filled the listed bucket: {} keys with {} PUTs in flight in {:.1} s ({:.0} PUTs/s)",
            p.keys,
            args.populate_concurrency,
            p.elapsed.as_secs_f64(),
            p.keys as f64 / p.elapsed.as_secs_f64().max(1e-9)
        );
    }
    metrics.print_table();
    Target::print_all(&targets(&metrics));
    Ok(())
}

fn record_small(
    metrics: &mut Metrics,
    kib: usize,
    floor: &[Duration],
    put: &[Duration],
    read_floor: &[Duration],
    get: &[Duration],
) {
    let [floor, put, read_floor, get] = [floor, put, read_floor, get].map(latency);
    metrics.record("put_p50_ms", format!("PUT {kib} KiB p50"), "ms", put.0);
    metrics.record("put_p99_ms", format!("PUT {kib} KiB p99"), "ms", put.1);
    metrics.record_floor(
        "put_floor_p50_ms",
        "  floor: write+fsync, rename, dir fsync p50",
        "ms",
        floor.0,
    );
    metrics.record_floor(
        "put_floor_p99_ms",
        "  floor: write+fsync, rename, dir fsync p99",
        "ms",
        floor.1,
    );
    metrics.record(
        "put_over_floor_p50",
        "  PUT / floor p50",
        "×",
        put.0 / floor.0.max(1e-9),
    );
    metrics.record("get_p50_ms", format!("GET {kib} KiB p50"), "ms", get.0);
    metrics.record("get_p99_ms", format!("GET {kib} KiB p99"), "ms", get.1);
    metrics.record_floor(
        "get_floor_p50_ms",
        format!("  floor: read a {kib} KiB file p50"),
        "ms",
        read_floor.0,
    );
    metrics.record_floor(
        "get_floor_p99_ms",
        format!("  floor: read a {kib} KiB file p99"),
        "ms",
        read_floor.1,
    );
}

/// p50 and p99 in milliseconds.
fn latency(samples: &[Duration]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |p| percentile(&sorted, p).map_or(0.0, ms);
    (at(50.0), at(99.0))
}

/// What the large PUT and GET are measured against, each in the same round.
struct Floors {
    /// Sequential write + fsync of the same bytes: the disk alone.
    disk_write: Transfer,
    /// The same bytes over one loopback TCP connection, written and fsynced before a one-byte
    /// acknowledgement: what any HTTP PUT of them must do at the least.
    tcp_write: Transfer,
    /// Sequential read of a file just written (from the page cache, as the object is).
    disk_read: Transfer,
    /// That file sent over one loopback TCP connection with `sendfile` and read by the client:
    /// what any HTTP GET of the bytes must do at the least.
    tcp_read: Transfer,
}

fn record_big(metrics: &mut Metrics, mib: usize, floors: Floors, put: Transfer, get: Transfer) {
    let [disk_write, tcp_write, disk_read, tcp_read, put, get] = [
        floors.disk_write,
        floors.tcp_write,
        floors.disk_read,
        floors.tcp_read,
        put,
        get,
    ]
    .map(Transfer::mib_per_s);
    let pct = |of: f64, floor: f64| 100.0 * of / floor.max(1e-9);
    metrics.record("big_put_mib_s", format!("PUT {mib} MiB multipart"), "MiB/s", put);
    metrics.record_floor(
        "big_put_tcp_floor_mib_s",
        "  floor: loopback TCP, write + fsync",
        "MiB/s",
        tcp_write,
    );
    metrics.record(
        "big_put_of_tcp_floor_pct",
        "  PUT / loopback floor",
        "%",
        pct(put, tcp_write),
    );
    metrics.record_floor(
        "big_put_floor_mib_s",
        "  disk floor: sequential write + fsync",
        "MiB/s",
        disk_write,
    );
    metrics.record(
        "big_put_of_floor_pct",
        "  PUT / disk floor",
        "%",
        pct(put, disk_write),
    );
    metrics.record("big_get_mib_s", format!("GET {mib} MiB"), "MiB/s", get);
    metrics.record_floor(
        "big_get_tcp_floor_mib_s",
        "  floor: sendfile over loopback TCP",
        "MiB/s",
        tcp_read,
    );
    metrics.record(
        "big_get_of_tcp_floor_pct",
        "  GET / loopback floor",
        "%",
        pct(get, tcp_read),
    );
    metrics.record_floor(
        "big_get_floor_mib_s",
        "  disk floor: sequential read (page cache)",
        "MiB/s",
        disk_read,
    );
    metrics.record(
        "big_get_of_floor_pct",
        "  GET / disk floor",
        "%",
        pct(get, disk_read),
    );
}

/// The processor time a large PUT or GET cost, per GiB moved, on each side.
fn record_cpu(metrics: &mut Metrics, keys: [&'static str; 2], what: &str, mib: usize, rss: Rss) {
    let gib = mib as f64 / 1024.0;
    let per_gib = |s: f64| s / gib.max(1e-9);
    metrics.record(
        keys[0],
        format!("  server CPU per GiB {what}"),
        "s",
        per_gib(rss.server_cpu_s),
    );
    metrics.record(
        keys[1],
        format!("  client CPU per GiB {what}"),
        "s",
        per_gib(rss.client_cpu_s),
    );
}

fn record_rss(metrics: &mut Metrics, keys: [&'static str; 3], phase: &str, rss: Rss) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let [before, peak, after] = keys;
    metrics.record(
        before,
        format!("  server RSS {phase}: before"),
        "MiB",
        mib(rss.before_kib),
    );
    metrics.record(
        peak,
        format!("  server RSS {phase}: peak"),
        "MiB",
        mib(rss.peak_kib),
    );
    metrics.record(
        after,
        format!("  server RSS {phase}: after"),
        "MiB",
        mib(rss.after_kib),
    );
}

/// Processor time one core spends on the MD5 of `total` bytes (`data` over and over): S3's ETag
/// of a PUT, which the store must compute over every byte it receives.
fn md5_seconds(data: &[u8], total: usize) -> f64 {
    // SAFETY: the context lives on this stack frame for the three calls; every pointer passed
    // is to a live buffer of the stated length.
    #[allow(unsafe_code)]
    unsafe {
        let mut context = std::mem::MaybeUninit::<aws_lc_sys::MD5_CTX>::uninit();
        let mut digest = [0u8; 16];
        let started = cpu_time_of_thread();
        aws_lc_sys::MD5_Init(context.as_mut_ptr());
        let mut left = total;
        while left > 0 {
            let piece = &data[..left.min(data.len())];
            aws_lc_sys::MD5_Update(context.as_mut_ptr(), piece.as_ptr().cast(), piece.len());
            left -= piece.len();
        }
        aws_lc_sys::MD5_Final(digest.as_mut_ptr(), context.as_mut_ptr());
        std::hint::black_box(digest);
        cpu_time_of_thread() - started
    }
}

/// This thread's processor time, in seconds.
fn cpu_time_of_thread() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live value it is given.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if ok {
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// What 80 % of the loopback floor leaves for everything a store does beyond the floor and the
/// MD5, on all of this machine's cores at once: when it is near zero, the PUT target is out of
/// reach for any store that computes S3's ETag, however lean its HTTP.
fn record_put_budget(metrics: &mut Metrics, md5_cpu_per_gib: f64, floor_cpu_per_gib: f64, floor_mib_s: f64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    metrics.record_floor(
        "md5_cpu_s_per_gib",
        "  MD5 (the ETag) per GiB, one core",
        "s",
        md5_cpu_per_gib,
    );
    // At 80 % of the floor a GiB takes 1024 / (0.8 × floor) seconds, on `cpus` cores.
    let budget = cpus * 1024.0 / (0.8 * floor_mib_s.max(1e-9));
    metrics.record_floor(
        "put_cpu_budget_left_s_per_gib",
        "  CPU per GiB left at 80% after floor + MD5",
        "s",
        budget - floor_cpu_per_gib - md5_cpu_per_gib,
    );
}

/// The targets of issue 12, judged on the medians.
fn targets(metrics: &Metrics) -> Vec<Target> {
    let median = |key| metrics.spread(key).map(|s| s.median);
    let mut out = Vec::new();
    if let (Some(put), Some(floor), Some(get), Some(read)) = (
        median("put_p50_ms"),
        median("put_floor_p50_ms"),
        median("get_p50_ms"),
        median("get_floor_p50_ms"),
    ) {
        // What HTTP, signing and the server's request handling add is what a GET costs beyond
        // reading the file: the same round trip with nothing durable in it.
        let http = (get - read).max(0.0);
        let bound = 1.5 * floor + http;
        out.push(Target {
            text: format!("PUT p50 ≤ 1.5× floor + HTTP (GET − read) = {bound:.3} ms"),
            met: put <= bound,
        });
    }
    // Judged against the same bytes over loopback TCP to and from the same disk: a page-cache
    // read moves no byte through a socket, so no HTTP GET can approach it (see the README).
    for (key, what) in [
        (
            "big_put_of_tcp_floor_pct",
            "large PUT ≥ 80% of loopback TCP + write + fsync",
        ),
        (
            "big_get_of_tcp_floor_pct",
            "large GET ≥ 80% of sendfile over loopback TCP",
        ),
    ] {
        if let Some(pct) = median(key) {
            out.push(Target {
                text: format!("{what} ({pct:.0}%)"),
                met: pct >= 80.0,
            });
        }
    }
    out
}

/// The benchmark's S3 client. By default it does what SDKs do over https, where the channel
/// already protects the body: `UNSIGNED-PAYLOAD` in the signature and a CRC64NVME checksum of
/// each body for the server to verify. `sign_payload` makes it sign each body's SHA-256
/// instead, as SDKs do over plain http, which the server must then verify too.
async fn s3_client(client: &cloister_cli::client::Client, sign_payload: bool) -> anyhow::Result<AmazonS3> {
    let builder = client.s3_builder(BUCKET).await?;
    let builder = if sign_payload {
        builder
    } else {
        builder
            .with_unsigned_payload(true)
            .with_checksum_algorithm(Checksum::CRC64NVME)
    };
    builder.build().context("cannot configure the S3 client")
}

/// Alternates one floor write and one PUT of the same bytes, so both see the same load.
async fn small_puts(
    store: &AmazonS3,
    floor_dir: &Path,
    round: usize,
    count: usize,
    body: &[u8],
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let payload = PutPayload::from(body.to_vec());
    let mut floor = Vec::with_capacity(count);
    let mut put = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        write_durably(floor_dir, &small_name(round, i), body)?;
        floor.push(started.elapsed());
        let path = ObjectPath::from(format!("small/{}", small_name(round, i)));
        let started = Instant::now();
        store.put(&path, payload.clone()).await?;
        put.push(started.elapsed());
    }
    Ok((floor, put))
}

/// Alternates reading back one floor file and GETting one object written by [`small_puts`].
async fn small_gets(
    store: &AmazonS3,
    floor_dir: &Path,
    round: usize,
    count: usize,
    body: &[u8],
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut floor = Vec::with_capacity(count);
    let mut get = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let read = std::fs::read(floor_dir.join(small_name(round, i)))?;
        floor.push(started.elapsed());
        anyhow::ensure!(read == body, "a floor file reads back wrong");
        let path = ObjectPath::from(format!("small/{}", small_name(round, i)));
        let started = Instant::now();
        let got = store.get(&path).await?.bytes().await?;
        get.push(started.elapsed());
        anyhow::ensure!(got == body, "GET {path} returned other bytes than were PUT");
    }
    Ok((floor, get))
}

fn small_name(round: usize, i: usize) -> String {
    format!("r{round}-{i:06}")
}

/// What a durable store does at the least to acknowledge a new object: write it to a new file
/// and flush it, rename it into place, and flush the directory so the name survives a crash.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Bytes moved in a time.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    bytes: u64,
    elapsed: Duration,
}

impl Transfer {
    fn mib_per_s(self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes `size` bytes to a new file at `path`, `chunk` after `chunk`, and flushes it: the disk's
/// sequential write floor for an object of that size.
fn write_sequential(path: &Path, chunk: &[u8], size: usize) -> anyhow::Result<Transfer> {
    anyhow::ensure!(!chunk.is_empty(), "an empty chunk cannot fill a file");
    let started = Instant::now();
    let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    file.sync_all()?;
    Ok(Transfer {
        bytes: size as u64,
        elapsed: started.elapsed(),
    })
}

/// Reads the file at `path` to its end in `buffer_len` pieces.
fn read_sequential(path: &Path, buffer_len: usize) -> anyhow::Result<Transfer> {
    let started = Instant::now();
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buffer = vec![0u8; buffer_len.max(1)];
    let mut bytes = 0u64;
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    Ok(Transfer {
        bytes,
        elapsed: started.elapsed(),
    })
}

/// The floor of a large PUT: `size` bytes, `chunk` after `chunk`, over one loopback TCP
/// connection to a thread that writes them to a new file at `path` as they arrive and fsyncs
/// it before it acknowledges with one byte. Timed from connecting to the acknowledgement.
fn receive_over_loopback(path: &Path, chunk: &[u8], size: usize) -> anyhow::Result<Transfer> {
    anyhow::ensure!(!chunk.is_empty(), "an empty chunk cannot fill a file");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on loopback")?;
    let address = listener.local_addr()?;
    let buffer_len = LOOPBACK_BUFFER;
    let receiver = std::thread::spawn({
        let path = path.to_owned();
        move || -> std::io::Result<u64> {
            let (mut socket, _) = listener.accept()?;
            let mut file = File::create(&path)?;
            let mut buffer = vec![0u8; buffer_len];
            let mut received = 0u64;
            loop {
                match socket.read(&mut buffer)? {
                    0 => break,
                    n => {
                        file.write_all(&buffer[..n])?;
                        received += n as u64;
                    }
                }
            }
            file.sync_all()?;
            socket.write_all(&[1])?;
            Ok(received)
        }
    });
    let started = Instant::now();
    let sent = (|| -> std::io::Result<()> {
        let mut socket = TcpStream::connect(address)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            socket.write_all(&chunk[..n])?;
            left -= n;
        }
        socket.shutdown(Shutdown::Write)?;
        let mut ack = [0u8; 1];
        socket.read_exact(&mut ack)
    })();
    let elapsed = started.elapsed();
    if sent.is_err() {
        // A receiver still waiting for its connection would never return.
        let _ = TcpStream::connect(address);
    }
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback floor's receiver panicked"))?
        .context("the loopback floor's receiver failed")?;
    sent.context("the loopback floor's sender failed")?;
    anyhow::ensure!(
        received == size as u64,
        "the loopback floor received {received} bytes of {size}"
    );
    Ok(Transfer {
        bytes: received,
        elapsed,
    })
}

/// The floor of a large GET: the file at `path` sent over one loopback TCP connection by a
/// thread with `sendfile` (no copy through user space on the sending side), read by the client
/// in [`LOOPBACK_BUFFER`] pieces. Timed from connecting to the end of the stream.
fn send_over_loopback(path: &Path) -> anyhow::Result<Transfer> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on loopback")?;
    let address = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        // std's copy from a file to a socket is sendfile(2) on Linux.
        std::io::copy(&mut file, &mut socket)
    });
    let started = Instant::now();
    let read = (|| -> std::io::Result<u64> {
        let mut socket = TcpStream::connect(address)?;
        let mut buffer = vec![0u8; LOOPBACK_BUFFER];
        let mut bytes = 0u64;
        loop {
            match socket.read(&mut buffer)? {
                0 => return Ok(bytes),
                n => bytes += n as u64,
            }
        }
    })();
    let elapsed = started.elapsed();
    if read.is_err() {
        let _ = TcpStream::connect(address);
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback floor's sender panicked"))?
        .context("the loopback floor's sender failed")?;
    let bytes = read.context("the loopback floor's reader failed")?;
    anyhow::ensure!(
        bytes == sent,
        "the loopback floor read {bytes} bytes of {sent} sent"
    );
    Ok(Transfer { bytes, elapsed })
}

/// Flushes the file system `dir` is on, untimed, so each large phase starts with a clean disk.
fn sync_file_system(dir: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .context("cannot run sync")?;
    anyhow::ensure!(status.success(), "sync -f {} failed: {status}", dir.display());
    Ok(())
}

/// A multipart upload as a client does it: `size` bytes in parts of `part`'s length, at most
/// `in_flight` parts at once, from initiation to the answer to Complete.
async fn put_big(
    store: &AmazonS3,
    path: &ObjectPath,
    part: &Bytes,
    size: usize,
    in_flight: usize,
) -> anyhow::Result<Transfer> {
    let started = Instant::now();
    let upload = store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part.len());
    let mut left = size;
    while left > 0 {
        let n = left.min(part.len());
        if let Err(e) = writer.wait_for_capacity(in_flight).await {
            let _ = writer.abort().await;
            return Err(e.into());
        }
        writer.put(part.slice(..n));
        left -= n;
    }
    writer.finish().await?;
    Ok(Transfer {
        bytes: size as u64,
        elapsed: started.elapsed(),
    })
}

/// A streamed GET of a whole object, counted and dropped as it arrives.
async fn get_big(store: &AmazonS3, path: &ObjectPath) -> anyhow::Result<Transfer> {
    let started = Instant::now();
    let mut stream = store.get(path).await?.into_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok(Transfer {
        bytes,
        elapsed: started.elapsed(),
    })
}

struct Populate {
    keys: usize,
    elapsed: Duration,
}

fn list_key(i: usize) -> ObjectPath {
    ObjectPath::from(format!("list/k{i:07}"))
}

/// Fills the listed prefix with `keys` small objects, `concurrency` PUTs in flight.
async fn fill_bucket(
    store: &Arc<AmazonS3>,
    keys: usize,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<Populate> {
    let bar = progress(json, keys, "filling the listed bucket");
    let started = Instant::now();
    let mut puts = futures::stream::iter(0..keys)
        .map(|i| {
            let store = store.clone();
            async move { store.put(&list_key(i), PutPayload::from_static(b"listed")).await }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = puts.next().await {
        result.context("a PUT filling the listed bucket failed")?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Populate {
        keys,
        elapsed: started.elapsed(),
    })
}

struct Listing {
    pages: usize,
    keys: usize,
    elapsed: Duration,
}

/// Lists the whole prefix with ListObjectsV2 in pages of [`PAGE_KEYS`], and checks every key
/// written came back.
async fn list_all(store: &AmazonS3, expected: usize) -> anyhow::Result<Listing> {
    let started = Instant::now();
    let (mut pages, mut keys) = (0, 0);
    let mut token = None;
    loop {
        let options = PaginatedListOptions {
            max_keys: Some(PAGE_KEYS),
            page_token: token,
            ..PaginatedListOptions::default()
        };
        let page = store.list_paginated(Some("list/"), options).await?;
        pages += 1;
        keys += page.result.objects.len();
        anyhow::ensure!(
            page.result.objects.len() <= PAGE_KEYS,
            "a page held {} keys, more than the {PAGE_KEYS} asked for",
            page.result.objects.len()
        );
        match page.page_token {
            Some(next) => token = Some(next),
            None => break,
        }
        anyhow::ensure!(
            keys <= expected,
            "the listing returned more keys than were written"
        );
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(
        keys == expected,
        "the listing returned {keys} keys, {expected} were written"
    );
    Ok(Listing { pages, keys, elapsed })
}

/// A progress bar on a terminal; a plain line on stderr otherwise (and with `--json`).
fn progress(json: bool, len: usize, message: &str) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("bench: {message} ({len})");
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style);
    }
    bar.set_message(message.to_owned());
    bar
}

/// The server's resident memory around and during a phase, in KiB, and the processor time the
/// server and this program (the client) spent in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rss {
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    server_cpu_s: f64,
    client_cpu_s: f64,
}

/// Runs `phase` while a thread reads the resident memory of process `pid` every
/// [`RSS_INTERVAL`]; the sampling is a thread of its own so a busy async runtime cannot skip it.
async fn measure_rss<T>(pid: u32, phase: impl Future<Output = T>) -> anyhow::Result<(T, Rss)> {
    let before_kib = resident_kib(pid)?;
    let cpu_before = (cpu_seconds(pid)?, cpu_seconds(std::process::id())?);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kib) = resident_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(RSS_INTERVAL);
            }
            peak
        })
    };
    let out = phase.await;
    stop.store(true, Ordering::Relaxed);
    let sampled_peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
    let after_kib = resident_kib(pid)?;
    let cpu_after = (cpu_seconds(pid)?, cpu_seconds(std::process::id())?);
    Ok((
        out,
        Rss {
            before_kib,
            peak_kib: sampled_peak.max(before_kib).max(after_kib),
            after_kib,
            server_cpu_s: cpu_after.0 - cpu_before.0,
            client_cpu_s: cpu_after.1 - cpu_before.1,
        },
    ))
}

/// The processor time (user and system, all threads) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read the processor time of process {pid}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no utime/stime in /proc/{pid}/stat"))?;
    // SAFETY: sysconf(3) reads a constant of the system; no memory is involved.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "the clock tick rate is unknown");
    Ok(ticks as f64 / per_second as f64)
}

/// utime + stime, in clock ticks, of a `/proc/PID/stat` line. The command name in parentheses
/// may hold spaces and parentheses, so the fields are counted from its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory of process {pid}"))?;
    vm_rss_kib(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The `VmRSS` line of a `/proc/PID/status` text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

fn random_bytes(len: usize) -> Vec<u8> {
    // Random bytes, so neither the file system nor a store can shrink what it writes.
    let mut bytes = vec![0u8; len];
    rand::fill(bytes.as_mut_slice());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tcloister\nVmPeak:\t  900000 kB\nVmRSS:\t   41234 kB\nRssAnon:\t 30000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(41234));
        assert_eq!(vm_rss_kib("Name:\tx\nVmPeak:\t 1 kB\n"), None, "no VmRSS line");
        assert_eq!(vm_rss_kib("VmRSS:\t 12 MB\n"), None, "an unknown unit");
        assert_eq!(vm_rss_kib("VmRSS:\t lots kB\n"), None, "not a number");
        let own = resident_kib(std::process::id()).unwrap();
        assert!(own > 0, "this test process has resident memory");
    }

    #[test]
    fn processor_time_is_read_from_proc_stat() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 1000 \
                    90000 1000";
        assert_eq!(cpu_ticks(stat), Some(325), "utime 250 + stime 75");
        assert_eq!(cpu_ticks("4242 (x) S 1 2 3"), None, "a short line");
        assert_eq!(cpu_ticks("no name here"), None);
        let before = cpu_seconds(std::process::id()).unwrap();
        let mut spin = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        assert!(spin > 0);
        let after = cpu_seconds(std::process::id()).unwrap();
        assert!(after > before, "100 ms of spinning shows as processor time");
    }

    #[test]
    fn the_durable_write_floor_leaves_the_bytes_under_the_name() {
        let dir = tempfile::tempdir().unwrap();
        write_durably(dir.path(), "a", b"first").unwrap();
        write_durably(dir.path(), "a", b"second").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a"], "no temporary file is left behind");
    }

    #[test]
    fn the_sequential_floor_writes_and_reads_the_whole_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let chunk: Vec<u8> = (0..=255).collect();
        let written = write_sequential(&path, &chunk, 1000).unwrap();
        assert_eq!(written.bytes, 1000);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 1000);
        assert_eq!(&on_disk[256..512], chunk.as_slice(), "the chunk repeats");
        assert_eq!(on_disk[999], 231, "the last chunk is cut short");
        let read = read_sequential(&path, 64).unwrap();
        assert_eq!(read.bytes, 1000);
        assert!(
            write_sequential(&path, &[], 10).is_err(),
            "an empty chunk is refused"
        );
    }

    #[test]
    fn the_loopback_floors_move_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received");
        let chunk: Vec<u8> = (0..=255).collect();
        let received = receive_over_loopback(&path, &chunk, 3000).unwrap();
        assert_eq!(received.bytes, 3000);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 3000, "the receiver wrote what it received");
        assert_eq!(&on_disk[512..768], chunk.as_slice());
        let sent = send_over_loopback(&path).unwrap();
        assert_eq!(sent.bytes, 3000, "the whole file went over the socket");
        assert!(send_over_loopback(&dir.path().join("missing")).is_err());
        assert!(receive_over_loopback(&path, &[], 10).is_err());
    }

    #[test]
    fn throughput_is_mib_per_second() {
        let t = Transfer {
            bytes: 512 * MIB as u64,
            elapsed: Duration::from_millis(250),
        };
        assert!((t.mib_per_s() - 2048.0).abs() < 1e-6);
    }

    #[test]
    fn targets_judge_the_medians() {
        let mut metrics = Metrics::default();
        for (put, floor, get, read) in [(3.0, 2.0, 1.0, 0.1), (3.5, 2.0, 1.0, 0.1), (9.0, 2.0, 1.0, 0.1)] {
            metrics.record("put_p50_ms", "", "ms", put);
            metrics.record("put_floor_p50_ms", "", "ms", floor);
            metrics.record("get_p50_ms", "", "ms", get);
            metrics.record("get_floor_p50_ms", "", "ms", read);
        }
        metrics.record("big_put_of_tcp_floor_pct", "", "%", 79.0);
        metrics.record("big_get_of_tcp_floor_pct", "", "%", 95.0);
        metrics.record("big_get_of_floor_pct", "", "%", 5.0);
        let targets = targets(&metrics);
        // Median PUT 3.5 ms against 1.5 × 2 ms + (1 − 0.1) ms = 3.9 ms.
        assert!(targets[0].met, "{}", targets[0].text);
        assert!(targets[0].text.contains("3.900"), "{}", targets[0].text);
        assert!(!targets[1].met, "79% is below 80%");
        assert!(targets[2].met);
        assert_eq!(targets.len(), 3);
    }

    #[test]
    fn arguments_below_the_s3_minimums_are_refused() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: S3Args,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from([&["bench"], extra].concat())
                .unwrap()
                .args
                .validate()
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--part-mib", "4"]).is_err());
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--small-ops", "0"]).is_err());
        assert!(parse(&["--parts-in-flight", "0"]).is_err());
        assert!(
            parse(&["--list-keys", "0", "--big-mib", "0"]).is_ok(),
            "phases can be skipped"
        );
    }
}
