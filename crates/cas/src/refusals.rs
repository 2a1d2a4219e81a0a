//! The audit of refused attestations, bounded.
//!
//! Anyone can send an attestation request, so an entry per refusal would let anyone grow the
//! audit log (which is signed, hash-chained and never pruned) without bound. Refusals are
//! counted in windows: within a window, the first few of each reason class and overall are
//! recorded one by one (`attest-fail`), the rest only counted, and a window that left some
//! out ends with one `attest-fail-summary` entry holding the counts per class. A flood of any
//! size therefore costs at most `total + 1` entries per window, and nothing it sends is
//! stored beyond a bounded prefix of the reason.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cloister_cas_store::AuditRecord;
use serde_json::json;
use time::OffsetDateTime;

/// Longest reason (in bytes) an `attest-fail` entry keeps; parsers quote what they were sent.
const MAX_REASON: usize = 512;
/// Longest measurement (hex) kept; the longest real one (TDX, SEV-SNP) is 96.
const MAX_MEASUREMENT: usize = 128;
/// Shortest counting window: every window may end with a summary entry.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// Why an attestation was refused, coarsely: the unit refusals are counted and limited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalClass {
    /// Malformed, unknown, expired or used nonce.
    Nonce,
    /// The public key or the evidence does not parse.
    Malformed,
    /// No usable endorsements (DCAP collateral, VCEK).
    Endorsements,
    /// The evidence did not verify.
    Evidence,
    /// The report data does not bind the nonce and the key.
    Binding,
    /// The TEE was launched for another CAS, session or service.
    Launch,
    /// No such session or service.
    Session,
    /// The session's policy refuses the evidence.
    Policy,
    /// The configuration could not be sealed to the workload's key.
    Release,
    /// The service has used up its runs (`max_runs`).
    Limit,
}

impl RefusalClass {
    const ALL: [RefusalClass; 10] = [
        Self::Nonce,
        Self::Malformed,
        Self::Endorsements,
        Self::Evidence,
        Self::Binding,
        Self::Launch,
        Self::Session,
        Self::Policy,
        Self::Release,
        Self::Limit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Nonce => "nonce",
            Self::Malformed => "malformed",
            Self::Endorsements => "endorsements",
            Self::Evidence => "evidence",
            Self::Binding => "binding",
            Self::Launch => "launch",
            Self::Session => "session",
            Self::Policy => "policy",
            Self::Release => "release",
            Self::Limit => "limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many refused attestations are audited one by one per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalAuditLimits {
    /// Length of a counting window; at least one second (each window may add a summary).
    pub window: Duration,
    /// Entries per reason class and window.
    pub per_class: u32,
    /// Entries per window over all classes.
    pub total: u32,
}

impl Default for RefusalAuditLimits {
    /// 10 per class and 30 in all per minute: the refusals a real deployment makes, with room.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            per_class: 10,
            total: 30,
        }
    }
}

/// One refused attestation, as audited.
pub(crate) struct Refusal<'a> {
    pub(crate) class: RefusalClass,
    /// `workload:<tee>`, or `workload:unknown` before the evidence was recognised.
    pub(crate) actor: String,
    /// `session#service`, both syntactically valid (so at most 193 bytes).
    pub(crate) subject: &'a str,
    pub(crate) reason: &'a str,
    pub(crate) measurement: Option<&'a str>,
}

const CLASSES: usize = RefusalClass::ALL.len();

struct Window {
    started: Instant,
    started_at: OffsetDateTime,
    refused: [u64; CLASSES],
    recorded: [u32; CLASSES],
    recorded_total: u32,
}

impl Window {
    fn new(now: Instant, wall: OffsetDateTime) -> Self {
        Self {
            started: now,
            started_at: wall,
            refused: [0; CLASSES],
            recorded: [0; CLASSES],
            recorded_total: 0,
        }
    }

    /// The summary of this window, if it left refusals out.
    fn summary(&self, ended: Instant) -> Option<AuditRecord> {
        let unrecorded: Vec<(RefusalClass, u64)> = RefusalClass::ALL
            .iter()
            .map(|&c| (c, self.refused[c.index()] - u64::from(self.recorded[c.index()])))
            .filter(|&(_, n)| n > 0)
            .collect();
        if unrecorded.is_empty() {
            return None;
        }
        let counts = |pick: &dyn Fn(RefusalClass) -> u64| -> serde_json::Map<String, serde_json::Value> {
            RefusalClass::ALL
                .iter()
                .filter(|&&c| self.refused[c.index()] > 0)
                .map(|&c| (c.as_str().to_owned(), json!(pick(c))))
                .collect()
        };
        let ended_at = self.started_at + ended.saturating_duration_since(self.started);
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Some(AuditRecord {
            kind: "attest-fail-summary".into(),
            actor: "cas".into(),
            subject: "attestation".into(),
            detail: json!({
                "from": rfc3339(self.started_at),
                "to": rfc3339(ended_at),
                "refused": counts(&|c| self.refused[c.index()]),
                "unrecorded": counts(&|c| self.refused[c.index()] - u64::from(self.recorded[c.index()])),
                "unrecorded_total": unrecorded.iter().map(|(_, n)| n).sum::<u64>(),
            }),
        })
    }
}

/// Decides which refusals are audited one by one and sums up the rest (see the module
/// documentation). It only decides: the caller writes the records it hands back.
pub(crate) struct RefusalRecorder {
    limits: RefusalAuditLimits,
    window: Mutex<Option<Window>>,
}

impl RefusalRecorder {
    pub(crate) fn new(limits: RefusalAuditLimits) -> Self {
        Self {
            limits: RefusalAuditLimits {
                window: limits.window.max(MIN_WINDOW),
                ..limits
            },
            window: Mutex::new(None),
        }
    }

    /// How often [`RefusalRecorder::closed_summary`] should be asked, so a window's summary
    /// is written soon after it closes even when no refusal follows.
    pub(crate) fn tick(&self) -> Duration {
        (self.limits.window / 4).min(Duration::from_secs(5))
    }

    /// Counts a refusal at `now` and returns what to audit: the summary of the previous
    /// window if it closed with refusals left out, then this refusal's entry unless a limit
    /// of the current window is reached.
    pub(crate) fn note(&self, refusal: &Refusal<'_>, now: Instant, wall: OffsetDateTime) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        let mut guard = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if guard
            .as_ref()
            .is_some_and(|w| now.saturating_duration_since(w.started) >= self.limits.window)
        {
            records.extend(guard.take().and_then(|w| w.summary(now)));
        }
        let window = guard.get_or_insert_with(|| Window::new(now, wall));
        let class = refusal.class.index();
        window.refused[class] += 1;
        if window.recorded[class] < self.limits.per_class && window.recorded_total < self.limits.total {
            window.recorded[class] += 1;
            window.recorded_total += 1;
            records.push(entry(refusal));
        }
        records
    }

    /// The summary of the current window if it has closed by `now` — or, with `closing`
    /// (shutdown), in any case; the window is then over.
    pub(crate) fn closed_summary(&self, now: Instant, closing: bool) -> Option<AuditRecord> {
        let mut guard = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let over = guard
            .as_ref()
            .is_some_and(|w| closing || now.saturating_duration_since(w.started) >= self.limits.window);
        if over {
            guard.take().and_then(|w| w.summary(now))
        } else {
            None
        }
    }
}

fn entry(refusal: &Refusal<'_>) -> AuditRecord {
    AuditRecord {
        kind: "attest-fail".into(),
        actor: refusal.actor.clone(),
        subject: refusal.subject.to_owned(),
        detail: json!({
            "class": refusal.class.as_str(),
            "reason": truncated(refusal.reason, MAX_REASON),
            "measurement": refusal.measurement.map(|m| truncated(m, MAX_MEASUREMENT)),
        }),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(class: RefusalClass, reason: &str) -> Refusal<'_> {
        Refusal {
            class,
            actor: "workload:unknown".into(),
            subject: "s#svc",
            reason,
            measurement: None,
        }
    }

    fn limits() -> RefusalAuditLimits {
        RefusalAuditLimits {
            window: Duration::from_secs(60),
            per_class: 3,
            total: 5,
        }
    }

    #[test]
    fn limits_per_class_and_in_all_then_sums_up_when_the_window_closes() {
        let recorder = RefusalRecorder::new(limits());
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let mut written = 0;
        for _ in 0..1000 {
            written += recorder
                .note(&refusal(RefusalClass::Nonce, "nonce expired"), t0, wall)
                .len();
        }
        assert_eq!(written, 3, "per-class limit");
        for _ in 0..1000 {
            written += recorder
                .note(&refusal(RefusalClass::Evidence, "bad"), t0, wall)
                .len();
        }
        assert_eq!(written, 5, "overall limit");
        assert!(
            recorder
                .closed_summary(t0 + Duration::from_secs(59), false)
                .is_none()
        );

        // The next refusal after the window writes the summary first, then its own entry.
        let later = t0 + Duration::from_secs(61);
        let records = recorder.note(&refusal(RefusalClass::Binding, "unbound"), later, wall);
        assert_eq!(records.len(), 2);
        let AuditRecord {
            kind, actor, detail, ..
        } = &records[0];
        assert_eq!((kind.as_str(), actor.as_str()), ("attest-fail-summary", "cas"));
        assert_eq!(detail["refused"], json!({"nonce": 1000, "evidence": 1000}));
        assert_eq!(detail["unrecorded"], json!({"nonce": 997, "evidence": 998}));
        assert_eq!(detail["unrecorded_total"], json!(1995));
        assert_eq!(records[1].kind, "attest-fail");
        assert_eq!(records[1].detail["class"], "binding");
    }

    #[test]
    fn a_window_without_omissions_needs_no_summary() {
        let recorder = RefusalRecorder::new(limits());
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        assert_eq!(
            recorder
                .note(&refusal(RefusalClass::Policy, "no"), t0, wall)
                .len(),
            1
        );
        assert!(
            recorder
                .closed_summary(t0 + Duration::from_secs(120), false)
                .is_none()
        );
        assert!(recorder.closed_summary(t0, true).is_none());
    }

    #[test]
    fn the_ticker_and_shutdown_write_the_summary() {
        let recorder = RefusalRecorder::new(limits());
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        for _ in 0..10 {
            recorder.note(&refusal(RefusalClass::Launch, "elsewhere"), t0, wall);
        }
        let summary = recorder
            .closed_summary(t0 + Duration::from_secs(60), false)
            .unwrap();
        assert_eq!(summary.detail["unrecorded"], json!({"launch": 7}));
        assert!(
            recorder
                .closed_summary(t0 + Duration::from_secs(61), true)
                .is_none(),
            "written once"
        );

        for _ in 0..10 {
            recorder.note(&refusal(RefusalClass::Launch, "elsewhere"), t0, wall);
        }
        assert!(
            recorder
                .closed_summary(t0 + Duration::from_secs(1), false)
                .is_none()
        );
        let at_shutdown = recorder
            .closed_summary(t0 + Duration::from_secs(1), true)
            .unwrap();
        assert_eq!(at_shutdown.detail["unrecorded_total"], json!(7));
    }

    #[test]
    fn a_zero_window_still_bounds_the_summaries() {
        let recorder = RefusalRecorder::new(RefusalAuditLimits {
            window: Duration::ZERO,
            per_class: 0,
            total: 0,
        });
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let written: usize = (0..1000)
            .map(|i| {
                let at = t0 + Duration::from_millis(i);
                recorder.note(&refusal(RefusalClass::Nonce, "x"), at, wall).len()
            })
            .sum();
        assert_eq!(written, 0, "one window of one second: nothing written yet");
        assert!(
            recorder
                .closed_summary(t0 + Duration::from_secs(1), false)
                .is_some()
        );
    }

    #[test]
    fn recorded_fields_are_bounded() {
        let recorder = RefusalRecorder::new(limits());
        let long = "é".repeat(100_000);
        let records = recorder.note(
            &Refusal {
                measurement: Some(&long),
                ..refusal(RefusalClass::Malformed, &long)
            },
            Instant::now(),
            OffsetDateTime::now_utc(),
        );
        let detail = &records[0].detail;
        assert!(detail["reason"].as_str().unwrap().len() <= MAX_REASON + 32);
        assert!(detail["measurement"].as_str().unwrap().len() <= MAX_MEASUREMENT + 32);
        assert_eq!(truncated("short", 10), "short");
        assert!(truncated(&long, 3).starts_with('é'));
    }
}
