//! Running a script as a contained process: own process group, cleared environment, memory
//! and CPU limits, a timeout, and line-wise capture of its output.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::LogLine;

/// Resource limits of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core (enforced only with cgroups).
    pub cpu_millis: Option<u64>,
    /// Wall-clock limit; the whole process group is killed when it passes.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            cpu_millis: None,
            timeout: crate::DEFAULT_TIMEOUT,
        }
    }
}

/// Limits last written to each slot (keyed by its first `cgroup.procs` path), so that a slot
/// reused with the same limits costs no cgroup writes. Slots are used by one job at a time.
type SlotLimits = (Option<u64>, Option<u64>);
static LIMITS_WRITTEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, SlotLimits>>> =
    std::sync::LazyLock::new(Default::default);

/// The process that owns a slot group named `<prefix>-<pid>-<n>`.
pub(crate) fn slot_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let _index: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Which cgroup hierarchy jobs can be placed in on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// No writable cgroups: memory is limited with `RLIMIT_AS`, CPU is not limited.
    None,
    /// cgroup v1, with our parent groups in the `cpu` and `memory` hierarchies.
    V1 {
        /// `<cpu hierarchy>/cloister`
        cpu: PathBuf,
        /// `<memory hierarchy>/cloister`
        memory: PathBuf,
    },
    /// cgroup v2 (unified), with our parent group.
    V2 {
        /// `<unified root>/cloister`
        parent: PathBuf,
    },
    /// A slot another process prepared with the job's limits (the executor, for a runtime
    /// process): scripts join these `cgroup.procs` files; the slot name is ignored.
    Prepared(Vec<PathBuf>),
}

impl CgroupSupport {
    /// Finds a writable hierarchy under `/sys/fs/cgroup`, creating our parent groups and
    /// removing slot groups that processes which have ended left behind.
    pub fn detect() -> Self {
        let found = Self::detect_at(Path::new("/sys/fs/cgroup"));
        let parents: Vec<&PathBuf> = match &found {
            Self::None | Self::Prepared(_) => Vec::new(),
            Self::V1 { cpu, memory } => vec![cpu, memory],
            Self::V2 { parent } => vec![parent],
        };
        for parent in parents {
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let Some(owner) = name.to_str().and_then(slot_owner) else {
                    continue;
                };
                // A live owner may be between creating its group and joining it.
                if !Path::new("/proc").join(owner.to_string()).exists() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        found
    }

    fn detect_at(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            let parent = root.join("cloister");
            let ok = std::fs::create_dir_all(&parent).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory").is_ok()
                && std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory").is_ok();
            return if ok { Self::V2 { parent } } else { Self::None };
        }
        let cpu = root.join("cpu").join("cloister");
        let memory = root.join("memory").join("cloister");
        if std::fs::create_dir_all(&cpu).is_ok()
            && std::fs::create_dir_all(&memory).is_ok()
            && cpu.join("cpu.cfs_quota_us").exists()
            && memory.join("memory.limit_in_bytes").exists()
        {
            Self::V1 { cpu, memory }
        } else {
            Self::None
        }
    }

    /// Prepares the group `slot` (created on first use, then reused) with a job's limits and
    /// returns the `cgroup.procs` files the job joins. A slot serves one job at a time, so the
    /// per-job cost is a few small writes instead of creating and removing groups.
    pub fn prepare(&self, slot: &str, limits: &Limits) -> std::io::Result<Vec<PathBuf>> {
        if let Self::Prepared(procs) = self {
            return Ok(procs.clone());
        }
        let procs = self.procs(slot);
        let wanted = (limits.cpu_millis, limits.memory_bytes);
        let cache_key = procs.first().cloned().unwrap_or_default();
        if procs.is_empty()
            || LIMITS_WRITTEN
                .lock()
                .is_ok_and(|m| m.get(&cache_key) == Some(&wanted))
        {
            return Ok(procs);
        }
        let written = self.write_limits(slot, limits)?;
        if let Ok(mut cache) = LIMITS_WRITTEN.lock() {
            cache.insert(cache_key, wanted);
        }
        Ok(written)
    }

    fn procs(&self, slot: &str) -> Vec<PathBuf> {
        match self {
            Self::None => Vec::new(),
            Self::Prepared(procs) => procs.clone(),
            Self::V1 { cpu, memory } => {
                vec![
                    cpu.join(slot).join("cgroup.procs"),
                    memory.join(slot).join("cgroup.procs"),
                ]
            }
            Self::V2 { parent } => vec![parent.join(slot).join("cgroup.procs")],
        }
    }

    fn write_limits(&self, slot: &str, limits: &Limits) -> std::io::Result<Vec<PathBuf>> {
        let period = 100_000u64;
        let quota = limits.cpu_millis.map(|m| (m * period / 1000).max(1000));
        let ensure = |dir: &Path| {
            if dir.is_dir() {
                Ok(())
            } else {
                std::fs::create_dir_all(dir)
            }
        };
        match self {
            Self::None => Ok(Vec::new()),
            Self::Prepared(procs) => Ok(procs.clone()),
            Self::V1 { cpu, memory } => {
                let (cpu, memory) = (cpu.join(slot), memory.join(slot));
                ensure(&cpu)?;
                ensure(&memory)?;
                std::fs::write(cpu.join("cpu.cfs_period_us"), period.to_string())?;
                std::fs::write(
                    cpu.join("cpu.cfs_quota_us"),
                    quota.map_or("-1".to_owned(), |q| q.to_string()),
                )?;
                let bytes = limits.memory_bytes.map_or("-1".to_owned(), |b| b.to_string());
                // memsw must stay >= the memory limit, so the order of the writes depends on the
                // direction of the change; writing memory first, then memsw, then memory again
                // covers both. Without memsw the job could swap instead of being held.
                let _ = std::fs::write(memory.join("memory.limit_in_bytes"), &bytes);
                let _ = std::fs::write(memory.join("memory.memsw.limit_in_bytes"), &bytes);
                std::fs::write(memory.join("memory.limit_in_bytes"), &bytes)?;
                Ok(vec![cpu.join("cgroup.procs"), memory.join("cgroup.procs")])
            }
            Self::V2 { parent } => {
                let group = parent.join(slot);
                ensure(&group)?;
                let cpu_max = quota.map_or_else(|| format!("max {period}"), |q| format!("{q} {period}"));
                std::fs::write(group.join("cpu.max"), cpu_max)?;
                let bytes = limits.memory_bytes.map_or("max".to_owned(), |b| b.to_string());
                std::fs::write(group.join("memory.max"), &bytes)?;
                let _ = std::fs::write(group.join("memory.swap.max"), "0");
                Ok(vec![group.join("cgroup.procs")])
            }
        }
    }

    /// Kills whatever is still in the slot's groups: processes that left the job's process
    /// group (`setsid`, double forks) cannot outlive the job.
    pub fn clear(&self, procs: &[PathBuf]) {
        for file in procs {
            let Ok(list) = std::fs::read_to_string(file) else {
                continue;
            };
            for pid in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid read from the job's own cgroup; no memory involved.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Whether jobs get a cgroup.
    pub fn enabled(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// The shell run before the job: it joins the job's cgroups (so that nothing the job starts
/// escapes them) and applies `RLIMIT_AS` when there are no cgroups, then runs the job (one of the
/// two endings below).
macro_rules! prelude {
    ($ending:literal) => {
        concat!(
            r#"cloister_m=$1; cloister_script=$2; cloister_n=$3; shift 3
while [ "$cloister_n" -gt 0 ]; do
  echo $$ > "$1" || { echo "cloister: cannot join cgroup $1" >&2; exit 125; }
  shift; cloister_n=$((cloister_n - 1))
done
if [ "$cloister_m" -gt 0 ]; then ulimit -v "$cloister_m" || exit 125; fi
unset cloister_m cloister_n
"#,
            $ending
        )
    };
}

/// A script runs in the prelude's own process (`.`) rather than in a second shell: one exec
/// fewer per job. It sees only its own arguments (`$#` is 0 for OSCAR jobs, as under
/// `sh script.sh`).
const PRELUDE_SCRIPT: &str = prelude!(r#". "$cloister_script""#);
/// As [`PRELUDE_SCRIPT`], for a script started before it may run ([`run_program_held`]): in
/// its cgroup and under its limits, the shell waits for a line on stdin, then gives the script
/// `/dev/null` as stdin, as an unheld script has.
const PRELUDE_SCRIPT_HELD: &str = prelude!(
    r#"IFS= read -r cloister_go || exit 125
unset cloister_go
exec </dev/null
. "$cloister_script""#
);
/// A program replaces the prelude's shell, with its arguments.
const PRELUDE_EXEC: &str = prelude!(r#"exec "$cloister_script" "$@""#);
/// The shell that runs the prelude.
const SHELL: &str = "/bin/sh";

/// What runs in the sandbox.
#[derive(Debug, Clone, Copy)]
pub enum Program<'a> {
    /// A shell script, sourced by the sandbox's `/bin/sh` after the prelude.
    Script(&'a Path),
    /// A program (an absolute path, or a name looked up in the job's `PATH`), exec'd by the
    /// sandbox's `/bin/sh` after the prelude.
    Exec(&'a Path),
    /// A program started as is, without the sandbox's shell: it joins no cgroup and gets no
    /// `RLIMIT_AS`, so it cannot be given memory, CPU or cgroup limits (a supervisor, such as
    /// `cloister-runtime`, that holds the program it runs to the job's limits itself). It still
    /// gets its own process group, the timeout, cancellation and the bounded log.
    Direct(&'a Path),
}

/// How to run one program: what, where, with which environment and under which limits.
#[derive(Debug, Clone, Copy)]
pub struct ProgramOptions<'a> {
    /// The program.
    pub program: Program<'a>,
    /// Its positional parameters.
    pub args: &'a [String],
    /// Its working directory.
    pub work_dir: &'a Path,
    /// Its whole environment (nothing is inherited).
    pub env: &'a [(String, String)],
    /// Memory and CPU limits, and the wall-clock timeout.
    pub limits: &'a Limits,
    /// Where cgroup slots are.
    pub cgroups: &'a CgroupSupport,
    /// The cgroup slot it runs in (ignored without cgroups and for prepared slots).
    pub slot: &'a str,
    /// Most bytes of output kept in the log.
    pub log_limit: usize,
    /// Keep stdout on its own ([`ScriptRun::stdout`]), up to this many bytes: a program that
    /// writes more is stopped ([`RunFailure::StdoutTooLarge`]), so what is kept is never a
    /// silently cut prefix.
    pub keep_stdout: Option<usize>,
}

/// Why a program could not run to its end. The messages are those job logs show.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// The cgroup slot could not be given the job's limits.
    #[error("cannot prepare the job's cgroup: {0}")]
    Cgroup(std::io::Error),
    /// [`Program::Direct`] with limits it cannot apply.
    #[error("a program started directly cannot be held to memory, CPU or cgroup limits")]
    Unconfinable,
    /// The process could not be started.
    #[error("cannot start {}: {source}", .program.display())]
    Start {
        /// What was started: `/bin/sh`, or a [`Program::Direct`] program.
        program: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The timeout passed.
    #[error("timed out after {} s", .0.as_secs())]
    TimedOut(Duration),
    /// The cancel future resolved.
    #[error("cancelled")]
    Cancelled,
    /// The process was killed by a signal (SIGKILL: most likely the memory limit).
    #[error("script killed by signal {signal}{}", kill_hint(*.signal))]
    Killed {
        /// The signal.
        signal: i32,
    },
    /// The prelude could not join the cgroup or set `RLIMIT_AS`.
    #[error("cannot apply the job's resource limits")]
    Limits,
    /// Waiting for the process failed.
    #[error("cannot wait for the script: {0}")]
    Wait(std::io::Error),
    /// The container engine could not run the job's container (the image, a device, a
    /// mount); the engine's own message is in the log.
    #[error("the container could not run: {0}")]
    Container(String),
    /// The program was started held and was never let run: what it waited for failed (the
    /// reason says what).
    #[error("{0}")]
    NotReleased(String),
    /// The program wrote more to stdout than is kept ([`ProgramOptions::keep_stdout`]); it was
    /// stopped.
    #[error("the script's stdout exceeds the limit of {0} bytes kept for the answer; it was stopped")]
    StdoutTooLarge(usize),
}

fn kill_hint(signal: i32) -> &'static str {
    if signal == libc::SIGKILL {
        " (memory limit or killed)"
    } else {
        ""
    }
}

/// Longest line kept in the log; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

/// What running a script produced.
#[derive(Debug)]
pub struct ScriptRun {
    /// stdout and stderr lines as they arrived (bounded by the log limit).
    pub log: Vec<LogLine>,
    /// stdout alone, when asked to keep it (whole, or the run failed).
    pub stdout: Vec<u8>,
    /// Exit code, if the script exited normally.
    pub exit_code: Option<i32>,
    /// Why the script could not run to its end (timeout, cancel, start failure, signal).
    pub failure: Option<RunFailure>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Asks the scheduler (Linux ≥ 6.12, EEVDF custom slices) for short time slices on the calling
/// thread, and the default for any process it starts (`SCHED_FLAG_RESET_ON_FORK`). A thread
/// with a shorter slice preempts the task running on its CPU when it wakes: the platform's
/// threads then get the CPU back from a job's process promptly, where before the vfork parent
/// often waited for the new script to finish before it could record that it had started. Best
/// effort: older kernels ignore the slice, and a refusal (seccomp, `ENOSYS`) changes nothing.
#[allow(unsafe_code)] // a libc call: see its SAFETY comment
fn prefer_low_latency() {
    /// `struct sched_attr`, first version (48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
    /// The shortest slice the kernel accepts.
    const SLICE_NS: u64 = 100_000;
    // Keep the thread's niceness: sched_setattr sets it too. getpriority's -1 is ambiguous
    // with an error, and either way -1 is a valid niceness to pass back.
    // SAFETY: getpriority has no memory effects.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: SCHED_FLAG_RESET_ON_FORK,
        nice,
        priority: 0,
        runtime: SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a valid, initialised struct; pid 0 is
    // the calling thread.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "no short scheduler slices");
    }
}

/// Runs a program (a script under `/bin/sh`, an exec'd program, or one started directly) in
/// `work_dir` with exactly `env`, in its own process group, in the cgroup slot `slot` (or under
/// `RLIMIT_AS` without cgroups), until it exits, `limits.timeout` passes or `cancel` resolves;
/// then kills whatever the job left. `on_start` is called once the process exists.
pub async fn run_program(
    options: ProgramOptions<'_>,
    cancel: impl std::future::Future<Output = ()> + Send,
    on_start: impl FnOnce() + Send,
) -> ScriptRun {
    run_program_held(
        options,
        None::<Hold<std::future::Ready<Result<(), String>>>>,
        cancel,
        on_start,
    )
    .await
}

/// What a held script waits for before its first line (see [`run_program_held`]).
pub struct Hold<F> {
    /// Resolves `Ok` once the script may run, `Err(reason)` when it must not.
    pub until: F,
    /// Takes the script's release as soon as its process is ready (see [`HandOver`]); without
    /// it, or when it gives the pipe back, the release is written here once `until` resolves.
    pub hand_over: Option<HandOver>,
    /// Work done by the thread that starts the script, around its start.
    pub setup: Option<Setup>,
}

/// What the thread that starts a held script does around its start (see [`Hold::setup`]): the
/// work directory and the files the script reads are readied there rather than in a hand-off
/// of their own, those files while the new process starts (on another CPU), not before it.
/// An `Err(reason)` fails the run unreleased ([`RunFailure::NotReleased`]).
pub struct Setup {
    /// Before the process starts: its working directory must exist.
    pub before: Box<dyn FnOnce() -> Result<(), String> + Send>,
    /// Once it exists, before its release may be handed over or written.
    pub after: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

/// A held script's release, once its process exists.
enum Release {
    /// Taken by the hand-over: whoever took it writes it.
    HandedOver,
    /// Written here when the hold ends (`None`: the process has no stdin to write to).
    Kept(Option<std::os::fd::OwnedFd>),
}

/// Why a process was not started.
enum NotStarted {
    /// Its setup failed first.
    Setup(String),
    /// Starting it failed.
    Start(std::io::Error),
}

/// Takes a held script's release: the write end of its standard input, on which one line lets
/// its first line run (closed unwritten, the script exits unrun). `Ok` when it was taken: the
/// taker writes the line when, and only when, the script may run, before the hold's `until`
/// resolves `Ok` (it resolves `Err` otherwise). `Err` gives the pipe back, and the release is
/// written by the runtime as without a hand-over. Handing the release to whoever decides lets
/// that thread start the script the moment it decides, rather than waking the job's task to do
/// it: on a busy machine that wake-up was a large part of a job's start.
pub type HandOver = Box<dyn FnOnce(std::os::fd::OwnedFd) -> Result<(), std::os::fd::OwnedFd> + Send>;

/// Writes a held script's release line (an empty pipe takes one byte without blocking) and
/// closes the pipe.
fn release_script(pipe: std::os::fd::OwnedFd) -> Result<(), String> {
    std::io::Write::write_all(&mut std::fs::File::from(pipe), b"\n")
        .map_err(|e| format!("cannot release the script: {e}"))
}

/// As [`run_program`]; with `hold`, a [`Program::Script`] is started (its shell forked and
/// exec'd, its cgroup joined, its limits applied) but waits before its first line until
/// `hold.until` resolves: `Ok` lets it run (and `on_start` is called then), `Err(reason)` kills
/// it unrun ([`RunFailure::NotReleased`]). Starting the process is most of a short job's start;
/// this lets it overlap whatever the job must wait for. The timeout counts from the release.
/// Other programs wait for `hold.until` before they are started.
pub async fn run_program_held(
    options: ProgramOptions<'_>,
    hold: Option<Hold<impl std::future::Future<Output = Result<(), String>> + Send>>,
    cancel: impl std::future::Future<Output = ()> + Send,
    on_start: impl FnOnce() + Send,
) -> ScriptRun {
    let held_script = hold.is_some() && matches!(options.program, Program::Script(_));
    tokio::pin!(cancel);
    let mut hold = hold.map(|hold| (Box::pin(hold.until), hold.hand_over, hold.setup));
    if !held_script && let Some((until, ..)) = hold.take() {
        let released = tokio::select! {
            released = until => released,
            () = &mut cancel => Err(RunFailure::Cancelled.to_string()),
        };
        if let Err(reason) = released {
            return ScriptRun {
                log: Vec::new(),
                stdout: Vec::new(),
                exit_code: None,
                failure: Some(RunFailure::NotReleased(reason)),
            };
        }
    }
    let ProgramOptions {
        program,
        args,
        work_dir,
        env,
        limits,
        cgroups,
        slot,
        log_limit,
        keep_stdout,
    } = options;
    let mut run = ScriptRun {
        log: Vec::new(),
        stdout: Vec::new(),
        exit_code: None,
        failure: None,
    };
    let direct = matches!(program, Program::Direct(_));
    if direct && (cgroups.enabled() || limits.memory_bytes.is_some() || limits.cpu_millis.is_some()) {
        run.failure = Some(RunFailure::Unconfinable);
        return run;
    }
    let procs = match cgroups.prepare(slot, limits) {
        Ok(p) => p,
        Err(e) => {
            run.failure = Some(RunFailure::Cgroup(e));
            return run;
        }
    };
    let rlimit_kib = if procs.is_empty() {
        limits.memory_bytes.map_or(0, |b| b / 1024)
    } else {
        0
    };

    let in_shell = |prelude: &str, target: &Path| {
        let mut command = tokio::process::Command::new(SHELL);
        command
            .arg("-c")
            .arg(prelude)
            .arg("cloister-job")
            .arg(rlimit_kib.to_string())
            .arg(target)
            .arg(procs.len().to_string())
            .args(&procs)
            .args(args);
        (command, PathBuf::from(SHELL))
    };
    let (mut command, started) = match program {
        Program::Script(target) if held_script => in_shell(PRELUDE_SCRIPT_HELD, target),
        Program::Script(target) => in_shell(PRELUDE_SCRIPT, target),
        Program::Exec(target) => in_shell(PRELUDE_EXEC, target),
        Program::Direct(path) => {
            let mut command = tokio::process::Command::new(path);
            command.args(args);
            (command, path.to_owned())
        }
    };
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(work_dir)
        .stdin(if held_script {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Started from a blocking-pool thread: the vfork parent must run again as soon as the child
    // has exec'd, and a busy async worker thread was often not scheduled until the script had
    // finished, because the new process ran on its CPU first (seen with `perf sched`).
    // The release is handed over by the thread that started the script, as soon as nothing is
    // left before it: coming back to this task first would cost a wake-up.
    let (setup, hand_over) = match hold.as_mut() {
        Some((_, hand_over, setup)) => (setup.take(), hand_over.take()),
        None => (None, None),
    };
    let spawned = tokio::task::spawn_blocking(move || {
        prefer_low_latency();
        let (before, after) = match setup {
            Some(Setup { before, after }) => (Some(before), Some(after)),
            None => (None, None),
        };
        if let Some(before) = before {
            before().map_err(NotStarted::Setup)?;
        }
        let mut child = command.spawn().map_err(NotStarted::Start)?;
        let ready = after.map_or(Ok(()), |after| after());
        let mut release = Release::Kept(child.stdin.take().and_then(|stdin| stdin.into_owned_fd().ok()));
        // Not ready: the release is neither handed over nor written.
        if let (Ok(()), Some(hand_over), Release::Kept(pipe)) = (&ready, hand_over, &mut release)
            && let Some(pipe) = pipe.take()
        {
            release = match hand_over(pipe) {
                Ok(()) => Release::HandedOver,
                Err(pipe) => Release::Kept(Some(pipe)),
            };
        }
        Ok((child, ready, release))
    })
    .await
    .unwrap_or_else(|e| Err(NotStarted::Start(std::io::Error::other(e))));
    let (mut child, ready, release) = match spawned {
        Ok(spawned) => spawned,
        Err(NotStarted::Setup(reason)) => {
            run.failure = Some(RunFailure::NotReleased(reason));
            return run;
        }
        Err(NotStarted::Start(source)) => {
            run.failure = Some(RunFailure::Start {
                program: started,
                source,
            });
            return run;
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    if let Some((until, ..)) = hold.take() {
        let released = match ready {
            Ok(()) => tokio::select! {
                released = until => released,
                () = &mut cancel => Err(RunFailure::Cancelled.to_string()),
            },
            Err(reason) => Err(reason),
        };
        let released = match (released, release) {
            (Ok(()), Release::HandedOver) => Ok(()),
            (Ok(()), Release::Kept(Some(pipe))) => release_script(pipe),
            (Ok(()), Release::Kept(None)) => Err("cannot release the script: no stdin".to_owned()),
            // Closing the pipe unwritten ends the script unrun.
            (Err(reason), _) => Err(reason),
        };
        if let Err(reason) = released {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) with a negative pid signals a process group; no memory is
                // involved.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            cgroups.clear(&procs);
            run.failure = Some(RunFailure::NotReleased(reason));
            return run;
        }
    }
    on_start();

    let (tx, mut rx) = mpsc::channel::<(Stream, OffsetDateTime, Vec<u8>)>(256);
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Out, tx.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Err, tx.clone()))),
    ];
    drop(tx);

    let mut logged = 0usize;
    let mut truncated = false;
    let mut stdout_overflow = false;
    // Keeps a line; answers whether it took stdout past what is kept.
    let mut collect = |run: &mut ScriptRun, (stream, time, line): (Stream, OffsetDateTime, Vec<u8>)| {
        let mut overflow = false;
        if let (Some(limit), Stream::Out) = (keep_stdout, stream) {
            if run.stdout.len() + line.len() > limit {
                overflow = true;
            } else {
                run.stdout.extend_from_slice(&line);
            }
        }
        if logged + line.len() > log_limit {
            if !truncated {
                truncated = true;
                run.log.push(LogLine {
                    time,
                    text: format!("cloister: log truncated at {log_limit} bytes"),
                });
            }
            return overflow;
        }
        logged += line.len();
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        run.log.push(LogLine {
            time,
            text: text.to_owned(),
        });
        overflow
    };

    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            Some(line) = rx.recv() => {
                if collect(&mut run, line) {
                    stdout_overflow = true;
                    run.failure = Some(RunFailure::StdoutTooLarge(keep_stdout.unwrap_or_default()));
                    break None;
                }
            }
            () = &mut deadline => {
                run.failure = Some(RunFailure::TimedOut(limits.timeout));
                break None;
            }
            () = &mut cancel => {
                run.failure = Some(RunFailure::Cancelled);
                break None;
            }
        }
    };
    // Whatever the script left behind in its process group goes with it.
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    if status.is_none() {
        let _ = child.wait().await;
    }
    // Pipes close once every process holding them is gone; bound the wait regardless.
    let drain = async {
        while let Some(line) = rx.recv().await {
            stdout_overflow |= collect(&mut run, line);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    // What it wrote before it exited counts too.
    if stdout_overflow && run.failure.is_none() {
        run.failure = keep_stdout.map(RunFailure::StdoutTooLarge);
    }
    for reader in readers.into_iter().flatten() {
        reader.abort();
    }
    cgroups.clear(&procs);

    match status {
        Some(Ok(status)) => {
            run.exit_code = status.code();
            if let Some(signal) = status.signal() {
                run.failure = Some(RunFailure::Killed { signal });
            } else if !direct
                && status.code() == Some(125)
                && run.log.iter().any(|l| l.text.starts_with("cloister:"))
            {
                run.failure = Some(RunFailure::Limits);
            }
        }
        Some(Err(e)) => run.failure = Some(RunFailure::Wait(e)),
        None => {}
    }
    run
}

async fn read_lines(
    mut source: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, OffsetDateTime, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line = Vec::new();
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            line.push(byte);
            let complete = byte == b'\n' || line.len() >= MAX_LINE;
            if complete
                && tx
                    .send((stream, OffsetDateTime::now_utc(), std::mem::take(&mut line)))
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx.send((stream, OffsetDateTime::now_utc(), line)).await;
    }
}
