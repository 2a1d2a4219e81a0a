//! An attested approver: the runtime of a service its session marks as one
//! ([`reserved::APPROVER`]) votes on governance proposals for its program, with a key only the
//! runtime holds.
//!
//! After attesting, the runtime generates an Ed25519 key and binds it at the CAS with its
//! attestation's grant, so the key counts as the board member `attested:SESSION#SERVICE` for
//! this version of the session. The program never gets the key: it gets a socket in its private
//! plaintext folder ([`APPROVER_SOCKET_VARIABLE`]) that answers two kinds of request, one per
//! line — `show ID` (the proposal's change and both session versions, as the pinned CAS shows
//! them to a board member, as one JSON line) and `approve ID` / `reject ID`. The runtime signs
//! only a change it fetched itself for a `show` on this run, so the program votes on what it
//! was shown, and on nothing else.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::governance::{Change, Vote};
use cloister_cas_client::sign::ClientIdentity;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cas_wait::{self, Repeat, WaitFailure};
use crate::failure::JobFailure;

pub(crate) use cloister_runtime::tee::APPROVER_SOCKET_VARIABLE;

/// The socket's name in the job's plaintext folder.
pub(crate) const SOCKET_NAME: &str = "approver.sock";
/// Longest request line: a verb and a proposal id.
const MAX_REQUEST: usize = 256;
/// How long a connection may stay silent before it is closed (the program is served one
/// connection at a time).
const IDLE: Duration = Duration::from_secs(30);

/// One request of the program.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// The proposal and the version it replaces.
    Show(String),
    /// A vote on a proposal shown before.
    Vote(String, Vote),
}

/// A proposal id as the CAS makes them: letters, digits, `-` and `_`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn parse_request(line: &str) -> Result<Request, String> {
    let mut words = line.split_ascii_whitespace();
    let (Some(verb), Some(id), None) = (words.next(), words.next(), words.next()) else {
        return Err("a request is `show ID`, `approve ID` or `reject ID`".into());
    };
    if !valid_id(id) {
        return Err("not a proposal id".into());
    }
    match verb {
        "show" => Ok(Request::Show(id.to_owned())),
        "approve" => Ok(Request::Vote(id.to_owned(), Vote::Approve)),
        "reject" => Ok(Request::Vote(id.to_owned(), Vote::Reject)),
        _ => Err("a request is `show ID`, `approve ID` or `reject ID`".into()),
    }
}

/// The runtime's approver: its CAS client signs with the bound key.
pub(crate) struct Approver {
    client: CasClient,
    key: String,
    /// Changes fetched for `show` on this run, by proposal id: the only ones it signs.
    shown: BTreeMap<String, Change>,
}

impl Approver {
    /// Generates the key and binds it to the attestation whose released configuration carried
    /// `grant`, waiting for an unavailable CAS until `deadline`.
    pub(crate) async fn bind(
        cas: &str,
        pin: &str,
        session: &str,
        service: &str,
        grant: &str,
        deadline: Instant,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Self, JobFailure> {
        // The program runs as this process's user: the runtime made itself non-dumpable at its
        // start (`run_job_dir`), or the program could read the key from /proc/<pid>/mem.
        let identity = ClientIdentity::generate();
        let key = identity.public();
        let client = CasClient::new(cas, pin, Some(identity)).map_err(JobFailure::CasClient)?;
        // Binding twice is harmless: the CAS keeps one entry per key.
        cas_wait::with_retries(cas, deadline, Repeat::Freely, log, || {
            client.bind_approver(session, service, grant)
        })
        .await
        .map_err(|failure| match failure {
            WaitFailure::Answered(source) => JobFailure::ApproverBind(source),
            WaitFailure::Unreachable(source) => JobFailure::ApproverBindUnreachable(source),
        })?;
        log(&format!(
            "cloister: approver key {key} bound as attested:{session}#{service}"
        ));
        Ok(Self {
            client,
            key,
            shown: BTreeMap::new(),
        })
    }

    /// Opens the socket in the program's plaintext folder (private to the runtime's user).
    pub(crate) fn listen(plain: &Path) -> Result<(UnixListener, std::path::PathBuf), JobFailure> {
        let path = plain.join(SOCKET_NAME);
        let listener = UnixListener::bind(&path).map_err(JobFailure::ApproverSocket)?;
        Ok((listener, path))
    }

    /// Answers the program's requests until the future is dropped (when the program ends).
    pub(crate) async fn serve(
        mut self,
        listener: UnixListener,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> std::convert::Infallible {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => self.connection(stream, log).await,
                // Descriptors running out is the program's doing; it may close some.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn connection(&mut self, stream: UnixStream, log: &mut (dyn FnMut(&str) + Send)) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read).take(0);
        loop {
            let mut line = Vec::new();
            // At most one byte past the limit: a longer line is refused, not buffered.
            reader.set_limit(MAX_REQUEST as u64 + 1);
            let read = tokio::time::timeout(IDLE, reader.read_until(b'\n', &mut line)).await;
            let Ok(Ok(n)) = read else { return };
            if n == 0 {
                return;
            }
            let request = if line.len() > MAX_REQUEST || line.last() != Some(&b'\n') {
                Err("request too long or not ended by a newline".to_owned())
            } else {
                std::str::from_utf8(&line)
                    .map_err(|_| "a request is text".to_owned())
                    .and_then(parse_request)
            };
            let (answer, keep_open) = match request {
                Ok(request) => (self.answer(request, log).await, true),
                Err(reason) => (json!({ "error": reason }), false),
            };
            let mut bytes = answer.to_string().into_bytes();
            bytes.push(b'\n');
            if write.write_all(&bytes).await.is_err() || !keep_open {
                return;
            }
        }
    }

    async fn answer(&mut self, request: Request, log: &mut (dyn FnMut(&str) + Send)) -> Value {
        let refused = |e: ClientError| json!({ "error": format!("CAS: {e}") });
        match request {
            Request::Show(id) => match self.show(&id).await {
                Ok(answer) => answer,
                Err(answer) => {
                    log(&format!("cloister: approver could not show proposal {id}"));
                    answer
                }
            },
            Request::Vote(id, vote) => {
                let Some(change) = self.shown.get(&id) else {
                    return json!({"error": format!("proposal {id} was not shown on this run: `show` it first")});
                };
                let signature = match self.client.sign_vote(change, vote) {
                    Ok(signature) => signature,
                    Err(e) => return refused(e),
                };
                match self.client.vote(&id, vote, signature).await {
                    Ok(after) => {
                        log(&format!(
                            "cloister: approver voted {} on proposal {id}: {}",
                            vote.as_str(),
                            after.state
                        ));
                        json!({
                            "proposal": id,
                            "vote": vote.as_str(),
                            "state": after.state,
                            "key": self.key,
                        })
                    }
                    Err(e) => {
                        log(&format!(
                            "cloister: approver's {} on proposal {id} refused",
                            vote.as_str()
                        ));
                        refused(e)
                    }
                }
            }
        }
    }

    async fn show(&mut self, id: &str) -> Result<Value, Value> {
        let refused = |e: ClientError| json!({ "error": format!("CAS: {e}") });
        let proposal = self.client.proposal(id).await.map_err(refused)?;
        let current = self
            .client
            .get_session(&proposal.change.session)
            .await
            .map_err(refused)?;
        if proposal.change.predecessor.as_deref() != Some(current.hash.as_str()) {
            return Err(json!({
                "error": format!(
                    "proposal {id} does not replace the current version {} of {}",
                    current.hash, proposal.change.session
                )
            }));
        }
        // A board member who does not own the session is shown both versions as JSON (explicit
        // secret values removed), which the program parses without a YAML library.
        let as_json = |what: &str, text: Option<&str>| {
            text.and_then(|t| serde_json::from_str::<Value>(t).ok())
                .ok_or_else(|| json!({ "error": format!("the CAS did not show the {what} version as JSON") }))
        };
        let proposed = as_json("proposed", proposal.yaml.as_deref())?;
        let current_json = as_json("current", Some(&current.yaml))?;
        self.shown.insert(id.to_owned(), proposal.change.clone());
        Ok(json!({
            "proposal": id,
            "state": proposal.state,
            "proposer": proposal.proposer,
            "change": proposal.change,
            "current": current_json,
            "proposed": proposed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_show_approve_and_reject_of_a_proposal_id_are_requests() {
        assert_eq!(parse_request("show p-1_a\n"), Ok(Request::Show("p-1_a".into())));
        assert_eq!(
            parse_request("approve abc"),
            Ok(Request::Vote("abc".into(), Vote::Approve))
        );
        assert_eq!(
            parse_request("reject abc\n"),
            Ok(Request::Vote("abc".into(), Vote::Reject))
        );
        for bad in [
            "",
            "key",
            "show",
            "sign abc",
            "approve abc extra",
            "show ../x",
            "show a/b",
            "SHOW abc",
            &format!("show {}", "a".repeat(129)),
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
