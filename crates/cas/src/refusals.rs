//! The audit of refusals that anyone can cause, bounded.
//!
//! Anyone can send an attestation request, and anyone can make a key and send signed
//! requests (proposals, votes, updates, reads), so an entry per refusal would let anyone grow
//! the audit log (which is signed, hash-chained and never pruned) without bound. Refusals are
//! counted in windows, per family (attestations; requests by keys with no standing on what
//! they ask about): within a window, the first few of each class and overall are recorded one
//! by one (`attest-fail`, or the request's own `…-refused` kind), the rest only counted, and a
//! window that left some out ends with one summary entry (`attest-fail-summary`,
//! `request-refused-summary`) holding the counts per class. A flood of any size therefore
//! costs at most `total + 1` entries per window and family, and nothing it sends is stored
//! beyond a bounded prefix of each field.

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
    const NAMES: [&'static str; 10] = [
        "nonce",
        "malformed",
        "endorsements",
        "evidence",
        "binding",
        "launch",
        "session",
        "policy",
        "release",
        "limit",
    ];

    /// The class's name in audit entries, in the order of the variants.
    fn as_str(self) -> &'static str {
        Self::NAMES[self.index()]
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

/// What a family of refusals is called in the audit log.
pub(crate) struct Family {
    /// The kind of its summary entries.
    pub(crate) summary_kind: &'static str,
    /// The subject of its summary entries.
    pub(crate) summary_subject: &'static str,
    /// Its classes, by index.
    pub(crate) classes: &'static [&'static str],
}

/// Refused attestations, by [`RefusalClass`].
pub(crate) const ATTESTATIONS: Family = Family {
    summary_kind: "attest-fail-summary",
    summary_subject: "attestation",
    classes: &RefusalClass::NAMES,
};

/// Refused signed requests by keys without standing, by their audit kind (`…-refused`).
pub(crate) const REQUESTS: Family = Family {
    summary_kind: "request-refused-summary",
    summary_subject: "requests",
    classes: &REQUEST_KINDS,
};

/// The kinds of [`REQUESTS`] entries; anything else counts as the last.
const REQUEST_KINDS: [&str; 12] = [
    "session-create-refused",
    "session-update-refused",
    "session-read-refused",
    "secret-read-refused",
    "history-read-refused",
    "proposal-create-refused",
    "proposal-vote-refused",
    "proposal-read-refused",
    "approver-bind-refused",
    "namespace-declare-refused",
    "platform-add-refused",
    "other-refused",
];

/// The class of a [`REQUESTS`] refusal of audit kind `kind`.
pub(crate) fn request_class(kind: &str) -> usize {
    REQUEST_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(REQUEST_KINDS.len() - 1)
}

struct Window {
    started: Instant,
    started_at: OffsetDateTime,
    refused: Vec<u64>,
    recorded: Vec<u32>,
    recorded_total: u32,
}

impl Window {
    fn new(now: Instant, wall: OffsetDateTime, classes: usize) -> Self {
        Self {
            started: now,
            started_at: wall,
            refused: vec![0; classes],
            recorded: vec![0; classes],
            recorded_total: 0,
        }
    }

    /// The summary of this window, if it left refusals out.
    fn summary(&self, family: &Family, ended: Instant) -> Option<AuditRecord> {
        let unrecorded = |c: usize| self.refused[c] - u64::from(self.recorded[c]);
        let unrecorded_total: u64 = (0..self.refused.len()).map(unrecorded).sum();
        if unrecorded_total == 0 {
            return None;
        }
        let counts = |pick: &dyn Fn(usize) -> u64| -> serde_json::Map<String, serde_json::Value> {
            family
                .classes
                .iter()
                .enumerate()
                .filter(|&(c, _)| self.refused[c] > 0)
                .map(|(c, name)| ((*name).to_owned(), json!(pick(c))))
                .collect()
        };
        let ended_at = self.started_at + ended.saturating_duration_since(self.started);
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Some(AuditRecord {
            kind: family.summary_kind.into(),
            actor: "cas".into(),
            subject: family.summary_subject.into(),
            detail: json!({
                "from": rfc3339(self.started_at),
                "to": rfc3339(ended_at),
                "refused": counts(&|c| self.refused[c]),
                "unrecorded": counts(&unrecorded),
                "unrecorded_total": unrecorded_total,
            }),
        })
    }
}

/// Decides which refusals of one family are audited one by one and sums up the rest (see the
/// module documentation). It only decides: the caller writes the records it hands back.
pub(crate) struct RefusalRecorder {
    family: Family,
    limits: RefusalAuditLimits,
    window: Mutex<Option<Window>>,
}

impl RefusalRecorder {
    pub(crate) fn new(family: Family, limits: RefusalAuditLimits) -> Self {
        Self {
            family,
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

    /// Counts a refused attestation at `now` and returns what to audit (see
    /// [`RefusalRecorder::note_class`]).
    pub(crate) fn note(&self, refusal: &Refusal<'_>, now: Instant, wall: OffsetDateTime) -> Vec<AuditRecord> {
        self.note_class(refusal.class.index(), || entry(refusal), now, wall)
    }

    /// Counts a refusal of class `class` at `now` and returns what to audit: the summary of
    /// the previous window if it closed with refusals left out, then the refusal's own entry
    /// (made by `record`) unless a limit of the current window is reached.
    pub(crate) fn note_class(
        &self,
        class: usize,
        record: impl FnOnce() -> AuditRecord,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Vec<AuditRecord> {
        let classes = self.family.classes.len();
        let class = class.min(classes - 1);
        let mut records = Vec::new();
        let mut guard = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if guard
            .as_ref()
            .is_some_and(|w| now.saturating_duration_since(w.started) >= self.limits.window)
        {
            records.extend(guard.take().and_then(|w| w.summary(&self.family, now)));
        }
        let window = guard.get_or_insert_with(|| Window::new(now, wall, classes));
        window.refused[class] += 1;
        let admitted =
            window.recorded[class] < self.limits.per_class && window.recorded_total < self.limits.total;
        if admitted {
            window.recorded[class] += 1;
            window.recorded_total += 1;
        }
        drop(guard);
        if admitted {
            records.push(record());
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
            guard.take().and_then(|w| w.summary(&self.family, now))
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
        let recorder = RefusalRecorder::new(ATTESTATIONS, limits());
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
        let recorder = RefusalRecorder::new(ATTESTATIONS, limits());
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
        let recorder = RefusalRecorder::new(ATTESTATIONS, limits());
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
        let recorder = RefusalRecorder::new(
            ATTESTATIONS,
            RefusalAuditLimits {
                window: Duration::ZERO,
                per_class: 0,
                total: 0,
            },
        );
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
    fn requests_are_limited_by_their_kind_and_summed_up_by_kind() {
        let recorder = RefusalRecorder::new(REQUESTS, limits());
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let record = |kind: &str| AuditRecord {
            kind: kind.into(),
            actor: "ed25519:…".into(),
            subject: "a/b".into(),
            detail: json!({}),
        };
        let mut written = Vec::new();
        for kind in [
            "proposal-create-refused",
            "proposal-vote-refused",
            "no-such-refused",
        ] {
            for _ in 0..100 {
                written.extend(recorder.note_class(request_class(kind), || record(kind), t0, wall));
            }
        }
        let kinds: Vec<&str> = written.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "proposal-create-refused",
                "proposal-create-refused",
                "proposal-create-refused",
                "proposal-vote-refused",
                "proposal-vote-refused"
            ]
        );
        let summary = recorder.closed_summary(t0, true).unwrap();
        assert_eq!(summary.kind, "request-refused-summary");
        assert_eq!(
            summary.detail["refused"],
            json!({"proposal-create-refused": 100, "proposal-vote-refused": 100, "other-refused": 100})
        );
        assert_eq!(summary.detail["unrecorded_total"], json!(295));
    }

    #[test]
    fn class_names_follow_the_variants() {
        for (i, class) in [
            RefusalClass::Nonce,
            RefusalClass::Malformed,
            RefusalClass::Endorsements,
            RefusalClass::Evidence,
            RefusalClass::Binding,
            RefusalClass::Launch,
            RefusalClass::Session,
            RefusalClass::Policy,
            RefusalClass::Release,
            RefusalClass::Limit,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(class.index(), i);
        }
        assert_eq!(RefusalClass::Limit.as_str(), "limit");
    }

    #[test]
    fn recorded_fields_are_bounded() {
        let recorder = RefusalRecorder::new(ATTESTATIONS, limits());
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
