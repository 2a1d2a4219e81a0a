//! The runtime as a container's first program (PID 1 of its PID namespace): orphans of the
//! script (a process it started in the background and did not wait for) are re-parented to
//! PID 1, which must reap them, or they stay zombies for the container's life. The runtime
//! reaps them without racing its own child handling: PID 1 forks at once, before any thread
//! exists, and only reaps (`waitpid(-1)`) and waits for the worker it forked; the worker does
//! the job and reaps only its own children, as tokio does. PID 1's exit code is the worker's
//! (128 + the signal that killed it, as a shell reports it).

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process is the worker of a PID 1 of ours, so that every other process of its
/// PID namespace but PID 1 is a job's (see [`kill_all_but_init`]).
static UNDER_INIT: AtomicBool = AtomicBool::new(false);

/// Runs `work` in a worker under a reaping PID 1 when this process is PID 1, else in this
/// process; answers `work`'s exit code either way.
#[allow(unsafe_code)] // fork, waitpid: see the SAFETY comments
pub fn run_as_init(work: impl FnOnce() -> u8) -> u8 {
    // SAFETY: getpid has no memory effects.
    if unsafe { libc::getpid() } != 1 {
        return work();
    }
    // PID 1 holds the container's standard output (the result's channel) as the worker does:
    // the script may not reach it through /proc/1 either. Kept across fork.
    if let Err(e) = crate::contained::not_dumpable() {
        eprintln!("cloister: cannot protect the runtime from the script: {e}");
        return 8;
    }
    // SAFETY: no thread exists yet (no runtime was built), so the child is a full copy of a
    // single-threaded process and may do anything.
    let worker = unsafe { libc::fork() };
    if worker < 0 {
        eprintln!(
            "cloister: cannot fork the worker: {}",
            std::io::Error::last_os_error()
        );
        return work();
    }
    if worker == 0 {
        UNDER_INIT.store(true, Ordering::SeqCst);
        return work();
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into an integer we own.
        let reaped = unsafe { libc::waitpid(-1, &raw mut status, 0) };
        if reaped == worker {
            if libc::WIFEXITED(status) {
                return u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(8);
            }
            // As a shell reports a killed child: 137 is SIGKILL (the memory limit, most likely),
            // which the platform reports as such.
            return u8::try_from(128 + libc::WTERMSIG(status)).unwrap_or(8);
        }
        if reaped < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 8;
        }
    }
}

/// Whether the caller runs under [`run_as_init`]'s PID 1 (and so alone with the job's
/// processes in its PID namespace).
pub fn under_init() -> bool {
    // SAFETY: getppid has no memory effects.
    #[allow(unsafe_code)]
    let parent = unsafe { libc::getppid() };
    UNDER_INIT.load(Ordering::SeqCst) && parent == 1
}

/// Kills every process of the PID namespace but PID 1 and the caller (what a script left:
/// daemons, `setsid` children), and waits, at most `bound`, until each is dead. Only under
/// [`run_as_init`]'s PID 1: anywhere else `kill(-1)` would reach the host's processes.
pub fn kill_all_but_init(bound: std::time::Duration) -> Result<(), String> {
    if !under_init() {
        return Err("not the worker of a container's first program".to_owned());
    }
    let deadline = std::time::Instant::now() + bound;
    loop {
        // SAFETY: kill(-1) signals every process the caller may signal but PID 1 and itself;
        // in a PID namespace of the container's own, those are the job's. No memory involved.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-1, libc::SIGKILL);
        }
        let alive = living_others();
        if alive == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{alive} process(es) of the script survived SIGKILL"));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Processes of this PID namespace other than PID 1 and the caller that are not yet dead
/// (zombies are dead: PID 1 reaps them).
fn living_others() -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != me)
        .filter(|pid| {
            // The state follows the command's closing parenthesis, which may itself hold any
            // character.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z" && state != "X")
            })
        })
        .count()
}
