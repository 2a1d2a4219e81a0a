//! Jobs queued before the commit of the upload that made them.
//!
//! The store tells the dispatcher of an upload's event just before the commit that holds it
//! ([`cloister_storage::ObjectEvents::object_committing`]). The dispatcher queues the event's
//! jobs at once, each behind a [`JobGate`], so that a worker readies the job (its work
//! directory, its input when the upload is small, its script's process) while the commit is
//! flushed to disk. The gate opens once the commit is durable and the jobs are recorded, giving
//! each job its record as committed; it closes when the commit failed, and a closed gate's job
//! never ran and leaves no trace.
//!
//! A job readied in time hands its held script's release to the gate (see
//! [`cloister_runtime::HandOver`]): the thread that opens the gate, the one that recorded the
//! jobs, then starts the script itself, and records that moment as the job's start, instead of
//! waking the job's task to do it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::state::JobRecord;

#[derive(Debug, Clone)]
enum Verdict {
    /// The upload is committed and its jobs recorded, as these records.
    Committed(Arc<Vec<JobRecord>>),
    /// The upload was not committed (or its jobs could not be recorded): the jobs must not run.
    Closed,
}

/// What the jobs behind a gate hand it, and what they may take from it.
#[derive(Default)]
struct Undecided {
    /// The verdict, once decided.
    decided: Option<Verdict>,
    /// The upload's bytes, when the store held them: jobs readied before the decision stage
    /// their input from them. Dropped at the decision, so memory holds only the bytes of
    /// uploads being committed.
    input: Option<Arc<[u8]>>,
    /// Releases of held scripts, written when the gate opens.
    releases: Vec<Release>,
}

/// A held script's release, handed to its gate.
struct Release {
    job: String,
    /// The write end of the script's standard input.
    pipe: OwnedFd,
    /// Where the job's start is recorded: the moment of the release.
    started: Arc<OnceLock<OffsetDateTime>>,
}

impl Release {
    /// Lets the script run if `verdict` recorded its job (its start is recorded as now); else
    /// closes the release unwritten, and the script ends unrun.
    fn decide(self, verdict: &Verdict) {
        let Verdict::Committed(records) = verdict else {
            return;
        };
        if records.iter().any(|r| r.name == self.job) {
            self.started.get_or_init(OffsetDateTime::now_utc);
            // A script that cannot be released has ended already (its shell failed before the
            // line, and its job reports why); the pipe closes either way.
            let _ = std::io::Write::write_all(&mut std::fs::File::from(self.pipe), b"\n");
        }
    }
}

/// Decides a gate: held by the dispatcher until the commit's outcome is known. Dropped
/// undecided, its gate counts as closed.
pub(crate) struct GateOpener {
    verdict: watch::Sender<Option<Verdict>>,
    undecided: Arc<Mutex<Undecided>>,
}

/// What a job queued before its upload's commit waits for.
#[derive(Clone)]
pub struct JobGate {
    verdict: watch::Receiver<Option<Verdict>>,
    undecided: Arc<Mutex<Undecided>>,
}

impl std::fmt::Debug for JobGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobGate")
            .field("verdict", &*self.verdict.borrow())
            .finish_non_exhaustive()
    }
}

/// A new gate and what decides it; `input` is the upload's bytes when the store gave them.
pub(crate) fn new_gate(input: Option<Arc<[u8]>>) -> (GateOpener, JobGate) {
    let (tx, rx) = watch::channel(None);
    let undecided = Arc::new(Mutex::new(Undecided {
        input,
        ..Undecided::default()
    }));
    (
        GateOpener {
            verdict: tx,
            undecided: undecided.clone(),
        },
        JobGate {
            verdict: rx,
            undecided,
        },
    )
}

impl GateOpener {
    /// The jobs are recorded, as `records`: the scripts handed over are released (their start
    /// recorded as now), then the gates open.
    pub(crate) fn open(self, records: Vec<JobRecord>) {
        self.decide(Verdict::Committed(Arc::new(records)));
    }

    /// The jobs must never run: the releases handed over close unwritten.
    pub(crate) fn close(self) {
        self.decide(Verdict::Closed);
    }

    /// Records the verdict, so that no more input is given and a release handed over from now
    /// on is decided at once; decides the releases handed over so far; then tells the jobs.
    fn decide(&self, verdict: Verdict) {
        let releases = match self.undecided.lock() {
            Ok(mut undecided) => {
                if undecided.decided.is_some() {
                    return;
                }
                undecided.decided = Some(verdict.clone());
                undecided.input = None;
                std::mem::take(&mut undecided.releases)
            }
            // Poisoned: the releases stay with their jobs, which run only if told so below.
            Err(_) => Vec::new(),
        };
        for release in releases {
            release.decide(&verdict);
        }
        let _ = self.verdict.send(Some(verdict));
    }
}

impl Drop for GateOpener {
    fn drop(&mut self) {
        // Undecided: closed.
        self.decide(Verdict::Closed);
    }
}

impl JobGate {
    /// Waits for the verdict: the job's record as committed when the gate opened, `None` when
    /// it closed.
    pub async fn wait_for_record(mut self, job: &str) -> Option<JobRecord> {
        let verdict = self.verdict.wait_for(Option::is_some).await.ok()?.clone();
        Self::record_in(verdict, job)
    }

    fn record_in(verdict: Option<Verdict>, job: &str) -> Option<JobRecord> {
        match verdict? {
            Verdict::Committed(records) => records.iter().find(|r| r.name == job).cloned(),
            Verdict::Closed => None,
        }
    }

    #[cfg(test)]
    async fn wait_owned(self, job: &'static str) -> Option<JobRecord> {
        self.wait_for_record(job).await
    }

    /// The gate as the runtime takes it, for `job`: the decision (`true` once it may run), the
    /// upload's bytes while the gate is undecided, and the hand-over of its release: the opener
    /// writes it, recording the start in `started`, or — handed over once the gate is decided —
    /// the hand-over itself does, so the job's task never stands between the two.
    pub(crate) fn for_runtime(
        self,
        job: String,
        started: Arc<OnceLock<OffsetDateTime>>,
    ) -> cloister_runtime::Gate {
        let input = self
            .undecided
            .lock()
            .ok()
            .and_then(|undecided| undecided.input.clone());
        let hand_over: cloister_runtime::HandOver = {
            let undecided = self.undecided.clone();
            let job = job.clone();
            Box::new(move |pipe| {
                let Ok(mut undecided) = undecided.lock() else {
                    return Err(pipe);
                };
                let release = Release { job, pipe, started };
                match undecided.decided.clone() {
                    None => undecided.releases.push(release),
                    Some(verdict) => {
                        drop(undecided);
                        release.decide(&verdict);
                    }
                }
                Ok(())
            })
        };
        cloister_runtime::Gate {
            decision: Box::pin(async move { self.wait_for_record(&job).await.is_some() }),
            input,
            hand_over: Some(hand_over),
        }
    }
}

/// A job on the workers' queue.
#[derive(Debug)]
pub struct Queued {
    /// The job's record: as committed, or as it will be unless its gate closes.
    pub record: JobRecord,
    /// Set when the job was queued before its upload's commit.
    pub gate: Option<JobGate>,
}

impl From<JobRecord> for Queued {
    fn from(record: JobRecord) -> Self {
        Self { record, gate: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::new_job;
    use crate::state::JobSource;

    fn record(name: &str) -> JobRecord {
        let service: crate::fdl::Service =
            serde_json::from_value(serde_json::json!({"name": "svc", "image": "x", "script": ":"})).unwrap();
        let mut record = new_job(&service, JobSource::Payload, String::new());
        record.name = name.to_owned();
        record
    }

    #[tokio::test]
    async fn an_opened_gate_gives_each_job_its_committed_record() {
        let (opener, gate) = new_gate(None);
        let waiting = tokio::spawn(gate.clone().wait_owned("a"));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a gate opened before its verdict");
        let mut committed = record("a");
        committed.queue_seq = 7;
        opener.open(vec![committed, record("b")]);
        assert_eq!(waiting.await.unwrap().map(|r| r.queue_seq), Some(7));
        assert_eq!(
            gate.clone().wait_for_record("b").await.map(|r| r.name),
            Some("b".to_owned())
        );
        assert!(
            gate.wait_for_record("c").await.is_none(),
            "a job the commit did not record may not run"
        );
    }

    #[tokio::test]
    async fn a_closed_or_dropped_gate_never_lets_a_job_run() {
        let (opener, gate) = new_gate(None);
        opener.close();
        assert!(gate.clone().wait_for_record("a").await.is_none());
        assert!(!gate.for_runtime("a".into(), Arc::default()).decision.await);
        let (opener, gate) = new_gate(None);
        drop(opener);
        assert!(gate.wait_for_record("a").await.is_none());
    }

    /// A pipe standing for a held script's stdin: what the gate writes is read back from `read`.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (read, write) = std::io::pipe().unwrap();
        (std::fs::File::from(OwnedFd::from(read)), OwnedFd::from(write))
    }

    /// What was written to a release before it was closed.
    fn written(mut read: std::fs::File) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut read, &mut out).unwrap();
        out
    }

    /// While the upload's commit runs, a job gets its bytes and may hand its release over; the
    /// opener writes the release of each recorded job (recording its start) before the gate
    /// opens, and closes unwritten the release of a job it did not record.
    #[tokio::test]
    async fn the_opener_releases_recorded_jobs_handed_over_before_it_opened() {
        let (opener, gate) = new_gate(Some(Arc::from(&b"bytes"[..])));
        let started_a = Arc::new(OnceLock::new());
        let runtime_a = gate.clone().for_runtime("a".into(), started_a.clone());
        assert_eq!(runtime_a.input.as_deref(), Some(&b"bytes"[..]));
        let (read_a, release_a) = pipe();
        assert!((runtime_a.hand_over.unwrap())(release_a).is_ok());
        let started_z = Arc::new(OnceLock::new());
        let runtime_z = gate.clone().for_runtime("z".into(), started_z.clone());
        let (read_z, release_z) = pipe();
        assert!((runtime_z.hand_over.unwrap())(release_z).is_ok());

        let before = OffsetDateTime::now_utc();
        opener.open(vec![record("a")]);
        assert_eq!(written(read_a), b"\n", "a recorded job was not released");
        assert!(started_a.get().is_some_and(|at| *at >= before));
        assert!(runtime_a.decision.await);
        assert_eq!(
            written(read_z),
            b"",
            "a job the commit did not record was released"
        );
        assert!(started_z.get().is_none());
        assert!(!runtime_z.decision.await);

        // Decided: no bytes are given any more, and a release handed over now is decided at
        // once: written for a recorded job, closed unwritten for another.
        let started = Arc::new(OnceLock::new());
        let late = gate.clone().for_runtime("a".into(), started.clone());
        assert!(late.input.is_none(), "the bytes outlived the decision");
        let (read, release) = pipe();
        assert!((late.hand_over.unwrap())(release).is_ok());
        assert_eq!(
            written(read),
            b"\n",
            "a release handed over after the opening was not written"
        );
        assert!(started.get().is_some());
        assert!(late.decision.await);
        let late = gate.for_runtime("z".into(), Arc::default());
        let (read, release) = pipe();
        assert!((late.hand_over.unwrap())(release).is_ok());
        assert_eq!(
            written(read),
            b"",
            "a job the commit did not record was released late"
        );
    }

    /// A gate that closes, or whose opener is dropped undecided (the commit's thread gone),
    /// closes the releases handed to it, before or after, unwritten: their scripts end without
    /// running.
    #[tokio::test]
    async fn a_closed_or_dropped_gate_closes_the_releases_unwritten() {
        for close in [true, false] {
            let (opener, gate) = new_gate(Some(Arc::from(&b"bytes"[..])));
            let runtime = gate.clone().for_runtime("a".into(), Arc::default());
            let (read, release) = pipe();
            assert!((runtime.hand_over.unwrap())(release).is_ok());
            if close {
                opener.close();
            } else {
                drop(opener);
            }
            assert_eq!(
                written(read),
                b"",
                "a release was written on a gate that did not open"
            );
            assert!(!runtime.decision.await);
            let late = gate.for_runtime("a".into(), Arc::default());
            let (read, release) = pipe();
            assert!((late.hand_over.unwrap())(release).is_ok());
            assert_eq!(
                written(read),
                b"",
                "a release handed to a closed gate was written"
            );
        }
    }
}
