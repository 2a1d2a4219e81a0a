//! Jobs queued before the commit of the upload that made them.
//!
//! The store tells the dispatcher of an upload's event just before the commit that holds it
//! ([`cloister_storage::ObjectEvents::object_committing`]). The dispatcher queues the event's
//! jobs at once, each behind a [`JobGate`], so that a worker readies the job (its work
//! directory, its script's process) while the commit is flushed to disk. The gate opens once
//! the commit is durable and the jobs are recorded, giving each job its record as committed;
//! it closes when the commit failed, and a closed gate's job never ran and leaves no trace.

use std::sync::Arc;

use tokio::sync::watch;

use crate::state::JobRecord;

#[derive(Debug, Clone)]
enum Verdict {
    /// The upload is committed and its jobs recorded, as these records.
    Committed(Arc<Vec<JobRecord>>),
    /// The upload was not committed (or its jobs could not be recorded): the jobs must not run.
    Closed,
}

/// Decides a gate: held by the dispatcher until the commit's outcome is known. Dropped
/// undecided, its gate counts as closed.
pub(crate) struct GateOpener(watch::Sender<Option<Verdict>>);

/// What a job queued before its upload's commit waits for.
#[derive(Debug, Clone)]
pub struct JobGate(watch::Receiver<Option<Verdict>>);

/// A new gate and what decides it.
pub(crate) fn new_gate() -> (GateOpener, JobGate) {
    let (tx, rx) = watch::channel(None);
    (GateOpener(tx), JobGate(rx))
}

impl GateOpener {
    /// The jobs are recorded, as `records`: their gates open.
    pub(crate) fn open(self, records: Vec<JobRecord>) {
        let _ = self.0.send(Some(Verdict::Committed(Arc::new(records))));
    }

    /// The jobs must never run.
    pub(crate) fn close(self) {
        let _ = self.0.send(Some(Verdict::Closed));
    }
}

impl JobGate {
    /// Waits for the verdict: the job's record as committed when the gate opened, `None` when
    /// it closed.
    pub async fn wait_for_record(mut self, job: &str) -> Option<JobRecord> {
        let verdict = self.0.wait_for(Option::is_some).await.ok()?.clone();
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

    /// The gate as the runtime takes it: `true` once `job` may run.
    pub(crate) fn for_runtime(self, job: String) -> cloister_runtime::Gate {
        Box::pin(async move { self.wait_for_record(&job).await.is_some() })
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
        let (opener, gate) = new_gate();
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
        let (opener, gate) = new_gate();
        opener.close();
        assert!(gate.clone().wait_for_record("a").await.is_none());
        assert!(!gate.for_runtime("a".into()).await);
        let (opener, gate) = new_gate();
        drop(opener);
        assert!(gate.wait_for_record("a").await.is_none());
    }
}
