//! `cloister-runtime`: runs one confidential job inside its TEE, or one plain job as the first
//! program of its container (see the library docs).
//!
//! Usage: `cloister-runtime --job DIR` (the job directory an executor prepared). Status lines,
//! never content, go to standard output. `cloister-runtime --container-job DIR`: the job file
//! in DIR, the result as JSON on standard output. `cloister-runtime --warm DIR`: a warm
//! container's invocations over DIR's control socket. Exit codes: 0 the job succeeded, 8 it failed
//! (the reason is in `DIR/result.json`, or the result, and on standard output), 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
cloister-runtime: the first program of a confidential job, inside its TEE.

It attests to the CAS named by the job (and by the TEE's launch configuration), receives the
service's program, configuration and keys, decrypts the input, runs the program, and encrypts
its outputs and log to the data owners. The executor starts it; people rarely do.

Usage:
  cloister-runtime --job DIR      run the job described by DIR/job.json
  cloister-runtime --container-job DIR
                                  run the plain job described by DIR/job.json as the first
                                  program of its container (result as JSON on stdout)
  cloister-runtime --warm DIR     serve a service's synchronous invocations as the first
                                  program of a warm container, over DIR/control.sock
  cloister-runtime --measurement  print the simulation measurement of this runtime (hex)
  cloister-runtime --version      print the runtime's identity

Exit codes: 0 the job succeeded, 8 it failed (reason in DIR/result.json), 2 usage.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        // In a container the runtime is PID 1 and reaps the program's orphans; on the host
        // it runs as it is.
        ["--job", dir] => {
            let dir = PathBuf::from(dir);
            ExitCode::from(cloister_tee_runtime::init::run_as_init(|| tee_job(&dir)))
        }
        ["--container-job", dir] => {
            let dir = PathBuf::from(dir);
            ExitCode::from(cloister_tee_runtime::init::run_as_init(|| container_job(&dir)))
        }
        ["--warm", dir] => {
            let dir = PathBuf::from(dir);
            ExitCode::from(cloister_tee_runtime::init::run_as_init(|| warm(&dir)))
        }
        ["--measurement"] => {
            println!("{}", hex::encode(cloister_tee_runtime::sim_measurement()));
            ExitCode::SUCCESS
        }
        ["--version"] => {
            println!("{}", cloister_tee_runtime::RUNTIME_ID);
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A confidential job: status lines on standard output, the result in `DIR/result.json`.
fn tee_job(job_dir: &std::path::Path) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            println!("cloister: cannot start: {e}");
            return 8;
        }
    };
    let mut print = |line: &str| println!("{line}");
    let result = runtime.block_on(cloister_tee_runtime::run_job_dir(job_dir, &mut print));
    match result.status {
        cloister_runtime::Status::Succeeded => 0,
        cloister_runtime::Status::Failed => 8,
    }
}

/// A warm container's runtime: invocations until the platform hangs up (exit 0), else 8.
fn warm(control: &std::path::Path) -> u8 {
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(cloister_tee_runtime::run_warm(control)));
    match served {
        Ok(()) => 0,
        Err(reason) => {
            eprintln!("cloister: {reason}");
            8
        }
    }
}

/// A plain job in its container: the result is the only thing written to standard output.
fn container_job(control: &std::path::Path) -> u8 {
    use std::io::Write as _;
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(cloister_tee_runtime::run_container_job(control)),
        Err(e) => {
            eprintln!("cloister: cannot start: {e}");
            return 8;
        }
    };
    let written = serde_json::to_vec(&result)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&json)?;
            stdout.flush()
        });
    if let Err(e) = written {
        eprintln!("cloister: cannot report the result: {e}");
        return 8;
    }
    match result.status {
        cloister_runtime::Status::Succeeded => 0,
        cloister_runtime::Status::Failed => 8,
    }
}
