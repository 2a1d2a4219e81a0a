//! Waiting for the CAS: a CAS that is down, restarting, sealed or overloaded when a job needs it
//! is tried again with exponential back-off until a deadline, instead of failing the job at
//! the first refused connection.

use std::future::Future;
use std::time::{Duration, Instant};

use cloister_cas_client::client::ClientError;
use http::StatusCode;

/// The first pause between attempts; each pause doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Time kept for the last attempt before the deadline (a refused connection is told at once).
const LAST_ATTEMPT: Duration = Duration::from_millis(100);

/// What may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// The request may run twice (attestation: a second one takes a fresh nonce and key).
    Freely,
    /// Only a request that cannot have reached the CAS is sent again (a volume commit is a
    /// compare-and-swap: one that went through but whose answer was lost would be refused
    /// the second time as stale).
    UnlessSent,
}

/// The CAS did not answer usefully before the deadline.
#[derive(Debug, thiserror::Error)]
#[error(
    "the CAS at {cas} is unreachable: gave up after {attempts} attempt(s) in {:.1} s: {last}",
    .waited.as_secs_f64()
)]
pub(crate) struct Unreachable {
    pub(crate) cas: String,
    pub(crate) attempts: u32,
    pub(crate) waited: Duration,
    pub(crate) last: ClientError,
}

/// Why waiting for the CAS ended without an answer.
#[derive(Debug)]
pub(crate) enum WaitFailure {
    /// The CAS answered, and it is not worth asking again (a refusal, a pin mismatch).
    Answered(ClientError),
    /// The CAS stayed unavailable until the deadline.
    Unreachable(Unreachable),
}

/// Whether `error` says the CAS could answer a later attempt.
fn transient(error: &ClientError, repeat: Repeat) -> bool {
    match error {
        ClientError::Unavailable { sent, .. } => !sent || repeat == Repeat::Freely,
        // Sealed (503), overloaded (429) or behind a proxy that lost it (502, 504): refused
        // before anything was done.
        ClientError::Refused { status, .. } => matches!(
            *status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT
        ),
        ClientError::Transport(_) | ClientError::NoIdentity | ClientError::Local(_) => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes; each attempt is cut
/// at the deadline too, so a CAS that accepts connections and never answers holds the job no
/// longer than one that refuses them. Retries are noted in `log` at the 1st, 2nd, 4th, 8th…
/// failure, so a long outage does not fill the job's log.
pub(crate) async fn with_retries<T, F, Fut>(
    cas: &str,
    deadline: Instant,
    repeat: Repeat,
    log: &mut (dyn FnMut(&str) + Send),
    mut attempt: F,
) -> Result<T, WaitFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(left, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if transient(&error, repeat) => error,
            Ok(Err(error)) => return Err(WaitFailure::Answered(error)),
            Err(_) => ClientError::Unavailable {
                message: "no answer before the deadline".into(),
                sent: true,
            },
        };
        // The pause is shortened to leave time for a last attempt before the deadline.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(LAST_ATTEMPT);
        if left.is_zero() {
            return Err(WaitFailure::Unreachable(Unreachable {
                cas: cas.to_owned(),
                attempts,
                waited: started.elapsed(),
                last: error,
            }));
        }
        let pause_now = pause.min(left);
        if attempts.is_power_of_two() {
            log(&format!(
                "cloister: the CAS at {cas} is unavailable ({error}); trying again (attempt {attempts}, next in \
                 {:.1} s)",
                pause_now.as_secs_f64()
            ));
        }
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn down() -> ClientError {
        ClientError::Unavailable {
            message: "connection refused".into(),
            sent: false,
        }
    }

    #[tokio::test]
    async fn a_cas_that_comes_back_is_waited_for() {
        let calls = AtomicU32::new(0);
        let mut lines = Vec::new();
        let got = with_retries(
            "https://cas",
            Instant::now() + Duration::from_secs(30),
            Repeat::UnlessSent,
            &mut |l: &str| lines.push(l.to_owned()),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(down()),
                    2 => Err(ClientError::Refused {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "sealed".into(),
                    }),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("unavailable") && lines[0].contains("connection refused"));
    }

    #[tokio::test]
    async fn refusals_and_verdicts_are_not_retried() {
        let refusals: [fn() -> ClientError; 2] = [
            || ClientError::Refused {
                status: StatusCode::FORBIDDEN,
                message: "no match".into(),
            },
            || ClientError::Transport("does not match the pinned identity".into()),
        ];
        for refusal in refusals {
            let calls = AtomicU32::new(0);
            let got: Result<(), _> = with_retries(
                "https://cas",
                Instant::now() + Duration::from_secs(30),
                Repeat::Freely,
                &mut |_: &str| {},
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err(refusal()) }
                },
            )
            .await;
            assert!(matches!(got, Err(WaitFailure::Answered(_))));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    /// A request that may have gone through is not repeated when repeating is unsafe.
    #[tokio::test]
    async fn a_sent_request_is_repeated_only_when_that_is_safe() {
        let sent = || ClientError::Unavailable {
            message: "reset".into(),
            sent: true,
        };
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = with_retries(
            "https://cas",
            Instant::now() + Duration::from_secs(30),
            Repeat::UnlessSent,
            &mut |_: &str| {},
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(sent()) }
            },
        )
        .await;
        assert!(matches!(got, Err(WaitFailure::Answered(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A CAS that never answers (each attempt hangs) and one that stays down both end at the
    /// deadline, with a reason that names the CAS and the attempts.
    #[tokio::test]
    async fn the_deadline_bounds_an_absent_or_silent_cas() {
        for silent in [false, true] {
            let started = Instant::now();
            let got: Result<(), _> = with_retries(
                "https://cas.example:8081",
                Instant::now() + Duration::from_millis(1500),
                Repeat::Freely,
                &mut |_: &str| {},
                || async move {
                    if silent {
                        std::future::pending::<()>().await;
                    }
                    Err(down())
                },
            )
            .await;
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
            let Err(WaitFailure::Unreachable(unreachable)) = got else {
                panic!("{silent}: not unreachable");
            };
            let reason = unreachable.to_string();
            assert!(
                reason.starts_with("the CAS at https://cas.example:8081 is unreachable: gave up after"),
                "{reason}"
            );
            if silent {
                assert_eq!(unreachable.attempts, 1, "{reason}");
                assert!(reason.contains("no answer before the deadline"), "{reason}");
            } else {
                assert!(unreachable.attempts >= 3, "{reason}");
                assert!(reason.contains("connection refused"), "{reason}");
            }
        }
    }
}
