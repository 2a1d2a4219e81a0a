//! The work done per job in CPU instructions, next to the wall times of `cloister-bench jobs`
//! (`--instructions`): on a shared machine a wall time depends on the minute it was taken, an
//! instruction count hardly does, so a regression shows even when the wall times are noise.
//!
//! **The counter.** `perf stat -e instructions` where the machine has the hardware counter
//! (checked by counting `/bin/true` first; many VMs answer `<not supported>`), else valgrind's
//! callgrind, which counts the instructions it executes itself and needs no hardware. perf
//! counts what the kernel does on the processes' behalf too (unless the machine allows user
//! space only, which its event name then says: `instructions:u`); callgrind counts user space
//! only, so the kernel's side of fork, exec and the file system is not in its figures.
//!
//! **The floor.** The spawn floor's own work: `/bin/sh -c true` run under the counter, from its
//! exec to its exit (the median of [`FLOOR_SAMPLES`] runs).
//!
//! **The job path.** Counted as a difference of two runs of a private server under the counter
//! (callgrind with `--trace-children=yes`, one output file per process; perf counts the server
//! and every process it starts): one in which `N` one-byte objects are uploaded one after the
//! other to a service whose script is `:`, the other with no uploads. Both runs start a fresh
//! server the same way, create the same service, ask for its job list the same number of times
//! (the first run polls until its `N` jobs are finished; the second repeats as many requests)
//! and shut it down with SIGTERM, so the counter reports at a clean exit. What the first run did
//! more is what `N` uploads cost from the PUT's arrival to the job's record, divided by `N`: the
//! server's part (the S3 request, the object write with its event, the job commit, the
//! dispatch, the spawn and the job's bookkeeping) and, with callgrind, the job processes' part
//! apart (the shell that runs the script, counted like the floor). What is not in it: the
//! client's side, and the server's idle background work, which is time-driven and next to
//! nothing (one timer checks for stale uploads). Valgrind restarts its count at an exec and
//! drops the replaced image's, which loses nothing here: a job's shell sources its script in the
//! same process.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;

use crate::process::{Launch, start_server_with};
use crate::stats::percentile;

/// Runs of the floor under the counter; their median is the floor.
const FLOOR_SAMPLES: usize = 5;
/// How often the counted run asks whether its jobs are finished: rarely, since every request
/// is counted work (the other run repeats the same number of requests to cancel it out).
const POLL: Duration = Duration::from_secs(1);
/// The service the counted runs upload to.
const SERVICE: &str = "bench-instructions";

/// What counts instructions on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `perf stat` with the hardware counter.
    Perf,
    /// valgrind's callgrind.
    Callgrind,
}

impl Counter {
    /// perf where its instructions counter works, else callgrind where valgrind runs, else why
    /// neither can count.
    pub fn detect() -> Result<Self, String> {
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "instructions", "--", "/bin/true"])
            .output();
        let perf_note = match perf {
            Ok(out) if out.status.success() => match perf_count(&String::from_utf8_lossy(&out.stderr)) {
                Some(_) => return Ok(Self::Perf),
                None => "perf has no instructions counter here",
            },
            Ok(_) => "perf stat failed",
            Err(_) => "no perf",
        };
        match Command::new("valgrind").arg("--version").output() {
            Ok(out) if out.status.success() => Ok(Self::Callgrind),
            _ => Err(format!("{perf_note} and no valgrind")),
        }
    }

    /// The tool's name as the output prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Perf => "perf stat",
            Self::Callgrind => "valgrind --tool=callgrind",
        }
    }

    /// The program and arguments that run a command under this counter, its results in `out`.
    fn wrapper(self, out: &Path) -> Vec<OsString> {
        match self {
            Self::Perf => {
                let mut args: Vec<OsString> = ["perf", "stat", "-x,", "-e", "instructions", "-o"]
                    .map(OsString::from)
                    .to_vec();
                args.push(out.join("perf.csv").into_os_string());
                args.push("--".into());
                args
            }
            Self::Callgrind => {
                let mut file = OsString::from("--callgrind-out-file=");
                file.push(out.join("callgrind.%p"));
                ["valgrind", "--tool=callgrind", "--trace-children=yes", "-q"]
                    .map(OsString::from)
                    .into_iter()
                    .chain([file])
                    .collect()
            }
        }
    }

    /// The counts a wrapped run left in `out`: the process `main`'s and the others' (perf
    /// counts them together, as `main`'s).
    fn read(self, out: &Path, main: u32) -> anyhow::Result<Counts> {
        match self {
            Self::Perf => {
                let text =
                    std::fs::read_to_string(out.join("perf.csv")).context("perf stat left no output")?;
                let total = perf_count(&text).context("perf stat counted no instructions")?;
                Ok(Counts {
                    main: total,
                    others: 0,
                    scope: if text.contains("instructions:u") {
                        "user space"
                    } else {
                        "user space and kernel"
                    },
                })
            }
            Self::Callgrind => {
                let mut counts = Counts {
                    main: 0,
                    others: 0,
                    scope: "user space",
                };
                let mut seen_main = false;
                for entry in std::fs::read_dir(out).context("cannot read callgrind's output directory")? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("callgrind.")) else {
                        continue;
                    };
                    let text = std::fs::read_to_string(entry.path())?;
                    let count = callgrind_count(&text)
                        .with_context(|| format!("no instruction count in {}", entry.path().display()))?;
                    if pid.parse() == Ok(main) {
                        counts.main = count;
                        seen_main = true;
                    } else {
                        counts.others += count;
                    }
                }
                anyhow::ensure!(seen_main, "callgrind left no count for process {main}");
                Ok(counts)
            }
        }
    }
}

/// The instructions one counted run executed.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// The process the counter started (the server, or the floor's shell).
    main: u64,
    /// Every process it started (with perf: included in `main`).
    others: u64,
    /// What the count covers.
    scope: &'static str,
}

/// The value of the instructions line of `perf stat -x,` output, if it counted.
fn perf_count(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(',').collect();
        let event = fields.get(2)?;
        if event.starts_with("instructions") {
            fields.first()?.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The instructions executed (the `summary:` line, or `totals:`) of a callgrind output file.
fn callgrind_count(text: &str) -> Option<u64> {
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    value("summary:").or_else(|| value("totals:"))
}

/// Instructions per spawn and per job.
#[derive(Debug, Clone, Copy)]
pub struct PerJob {
    /// The counter.
    pub counter: Counter,
    /// What the counts cover (user space, or also the kernel).
    pub scope: &'static str,
    /// `/bin/sh -c true`, from exec to exit.
    pub floor: f64,
    /// The server's work per job (callgrind only).
    pub server: Option<f64>,
    /// The job processes' work per job (callgrind only).
    pub processes: Option<f64>,
    /// All of it.
    pub total: f64,
    /// Jobs in the counted run.
    pub jobs: usize,
}

impl PerJob {
    /// The JSON of the run's `instructions` member.
    pub fn to_json(self) -> serde_json::Value {
        json!({"available": true, "counter": self.counter.name(), "scope": self.scope,
            "jobs": self.jobs, "floor_per_spawn": self.floor, "server_per_job": self.server,
            "processes_per_job": self.processes, "job_path_per_job": self.total})
    }
}

/// Counts the floor and the job path (see the module's documentation) with `jobs` uploads,
/// the server started with `flags`.
pub async fn measure(
    counter: Counter,
    cloister: &Path,
    flags: &[&OsStr],
    jobs: usize,
) -> anyhow::Result<PerJob> {
    anyhow::ensure!(jobs >= 1, "--instruction-jobs must be at least 1");
    let floor = floor(counter)?;
    let (loaded, polls) = counted_run(counter, cloister, flags, jobs, None).await?;
    let (idle, _) = counted_run(counter, cloister, flags, 0, Some(polls)).await?;
    let per_job = |loaded: u64, idle: u64| (loaded as f64 - idle as f64) / jobs as f64;
    let server = per_job(loaded.main, idle.main);
    let processes = per_job(loaded.others, idle.others);
    let split = counter == Counter::Callgrind;
    Ok(PerJob {
        counter,
        scope: loaded.scope,
        floor,
        server: split.then_some(server),
        processes: split.then_some(processes),
        total: server + processes,
        jobs,
    })
}

/// Names a directory to keep the counted runs' raw output in (callgrind files to read with
/// `callgrind_annotate`, perf's CSV), for finding where the instructions go.
pub const KEEP_COUNTS_ENV: &str = "CLOISTER_BENCH_KEEP_COUNTS";

fn keep_counts(out: &Path, keep: &Path) -> anyhow::Result<()> {
    let run = keep.join(format!("run-{}", std::process::id()));
    let run = (0..)
        .map(|n| run.with_extension(n.to_string()))
        .find(|candidate| !candidate.exists())
        .context("no free name to keep the counts under")?;
    std::fs::create_dir_all(&run).with_context(|| format!("cannot create {}", run.display()))?;
    for entry in std::fs::read_dir(out).context("cannot read the counts' directory")? {
        let entry = entry?;
        std::fs::copy(entry.path(), run.join(entry.file_name()))
            .with_context(|| format!("cannot keep {}", entry.path().display()))?;
    }
    eprintln!("bench: kept the counts in {}", run.display());
    Ok(())
}

fn floor(counter: Counter) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for _ in 0..FLOOR_SAMPLES {
        let out = tempfile::tempdir().context("cannot create a directory for the counter")?;
        let wrapper = counter.wrapper(out.path());
        let (program, args) = wrapper.split_first().context("an empty counter command")?;
        let child = Command::new(program)
            .args(args)
            .args(["/bin/sh", "-c", "true"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", counter.name()))?;
        let pid = child.id();
        let output = child.wait_with_output()?;
        anyhow::ensure!(output.status.success(), "{} of /bin/sh failed", counter.name());
        let counts = counter.read(out.path(), pid)?;
        samples.push(counts.main + counts.others);
    }
    samples.sort_unstable();
    percentile(&samples, 50.0)
        .map(|n| n as f64)
        .context("no floor sample")
}

/// One server under the counter: `jobs` uploads and polls until they are finished, or (with
/// `polls`) no uploads and that many polls. Returns the counts and the polls made.
async fn counted_run(
    counter: Counter,
    cloister: &Path,
    flags: &[&OsStr],
    jobs: usize,
    polls: Option<usize>,
) -> anyhow::Result<(Counts, usize)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let out = dir.path().join("counts");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&out)?;
    let wrapper = counter.wrapper(&out);
    let launch = Launch {
        wrapper: &wrapper,
        stage_log: None,
    };
    let (server, client) = start_server_with(&launch, cloister, &data, flags).await?;
    // Under perf the child is perf; the server names its own pid in its data directory.
    let pid: u32 = std::fs::read_to_string(data.join("server.pid"))
        .context("the server wrote no pid file")?
        .trim()
        .parse()
        .context("the server's pid file holds no pid")?;
    let body = json!({"name": SERVICE, "image": "none", "script": ":",
        "input": [{"storage_provider": "minio.default", "path": format!("{SERVICE}/in")}]});
    client
        .system(reqwest::Method::POST, "/system/services", Some(&body))
        .await?;
    let store = client.s3(SERVICE).await?;
    for i in 0..jobs {
        store
            .put(
                &object_store::path::Path::from(format!("in/{i}")),
                PutPayload::from_static(b"x"),
            )
            .await?;
    }
    let logs = format!("/system/logs/{SERVICE}?limit=1000");
    let made = match polls {
        Some(polls) => {
            for _ in 0..polls {
                tokio::time::sleep(POLL).await;
                client.get_json(&logs).await?;
            }
            polls
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(60 + 10 * jobs as u64);
            let mut made = 0;
            loop {
                tokio::time::sleep(POLL).await;
                let answer = client.get_json(&logs).await?;
                made += 1;
                let statuses: Vec<&str> = answer["jobs"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter_map(|j| j["status"].as_str())
                    .collect();
                anyhow::ensure!(
                    !statuses.contains(&"Failed"),
                    "a job failed under the instruction counter"
                );
                if statuses.iter().filter(|s| **s == "Succeeded").count() >= jobs {
                    break made;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the counted jobs did not finish in time"
                );
            }
        }
    };
    server.terminate(pid, Duration::from_secs(300)).await?;
    let counts = counter.read(&out, pid)?;
    if let Some(keep) = std::env::var_os(KEEP_COUNTS_ENV) {
        keep_counts(&out, Path::new(&keep))?;
    }
    Ok((counts, made))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_read_only_when_it_counted() {
        assert_eq!(
            perf_count("1234567,,instructions,1000,100.00,,\n"),
            Some(1_234_567)
        );
        assert_eq!(
            perf_count("# started on x\n\n98,,instructions:u,10,100.00,,\n"),
            Some(98)
        );
        assert_eq!(perf_count("<not supported>,,instructions,0,100.00,,\n"), None);
        assert_eq!(perf_count("12,,cycles,0,100.00,,\n"), None, "another event");
    }

    #[test]
    fn callgrind_files_give_their_summary() {
        let file =
            "# callgrind format\nversion: 1\nevents: Ir\nfn=main\n1 5\nsummary: 225578\ntotals: 225587\n";
        assert_eq!(callgrind_count(file), Some(225_578));
        assert_eq!(callgrind_count("events: Ir\ntotals: 12\n"), Some(12));
        assert_eq!(callgrind_count("events: Ir\n"), None);
    }

    #[test]
    fn callgrind_counts_the_floor_when_valgrind_is_here() {
        if Command::new("valgrind").arg("--version").output().is_err() {
            eprintln!("skipped: no valgrind");
            return;
        }
        let sh = floor(Counter::Callgrind).unwrap();
        // A shell's start (the dynamic loader, libc, parsing `true`) is ~10⁵ instructions.
        assert!((10_000.0..100_000_000.0).contains(&sh), "{sh}");
    }
}
