//! `cloister cas` governance commands: proposals and votes, offline signatures over a change,
//! updates with signatures, and session history.

use std::path::Path;

use anyhow::Context;
use cloister_cas_client::governance::{Change, DetachedSignature, ProposalInfo, Vote};
use cloister_cas_client::sign::ClientIdentity;

use crate::cas::{CasConnect, client_error, print_json};
use crate::client::{exit, fail};

/// `cloister cas proposals`.
#[derive(clap::Subcommand)]
pub enum ProposalsCommand {
    /// List the proposals of the sessions you may oversee.
    Ls {
        /// Only sessions whose name starts with this.
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Show one proposal with the proposed session.
    Show {
        id: String,
        #[command(flatten)]
        connect: CasConnect,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The change a session file makes: its name, the predecessor it names (none when it creates
/// the session) and its hash.
fn change_of(yaml: &str) -> anyhow::Result<Change> {
    let session =
        cloister_cas_session::parse_session(yaml).map_err(|e| fail(exit::INVALID, e.to_string()))?;
    Ok(Change {
        hash: session.hash(),
        session: session.name,
        predecessor: session.predecessor,
    })
}

fn print_proposal(p: &ProposalInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(p);
    }
    println!("proposal    {}", p.id);
    println!("session     {}", p.change.session);
    println!(
        "predecessor {}",
        p.change.predecessor.as_deref().unwrap_or("(none)")
    );
    println!("hash        {}", p.change.hash);
    println!("proposer    {}", p.proposer);
    match &p.reason {
        Some(reason) => println!("state       {} ({reason})", p.state),
        None => println!("state       {}", p.state),
    }
    println!("expires     {}", p.expires);
    for v in &p.approvals {
        println!("approved by {} at {}", v.key, v.at);
    }
    for v in &p.rejections {
        println!("rejected by {} at {}", v.key, v.at);
    }
    if let Some(yaml) = &p.yaml {
        if p.redacted {
            eprintln!("cloister: explicit secret values are redacted");
        }
        println!("---\n{}", yaml.trim_end());
    }
    Ok(())
}

/// `cloister cas session propose FILE`.
pub async fn propose(file: &Path, connect: &CasConnect, json: bool) -> anyhow::Result<()> {
    let proposal = connect
        .client()?
        .propose(&read(file)?)
        .await
        .map_err(client_error)?;
    if json {
        print_json(&proposal)
    } else {
        println!(
            "proposed {} for {} ({})",
            proposal.id, proposal.change.session, proposal.change.hash
        );
        Ok(())
    }
}

/// `cloister cas session sign FILE --key K`: a detached approval over the file's change,
/// made offline.
pub fn sign(file: &Path, key: &Path, json: bool) -> anyhow::Result<()> {
    let change = change_of(&read(file)?)?;
    let identity = ClientIdentity::load(key).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let signature = identity
        .sign_vote(&change, Vote::Approve)
        .map_err(|e| fail(exit::INVALID, e))?;
    if json {
        print_json(&serde_json::json!({"change": change, "signature": signature.to_string()}))
    } else {
        println!("{signature}");
        Ok(())
    }
}

/// `cloister cas session update FILE --signature S...` (and `create`, in a namespace with a
/// board).
pub async fn update_signed(
    file: &Path,
    signatures: &[String],
    connect: &CasConnect,
    json: bool,
) -> anyhow::Result<()> {
    let yaml = read(file)?;
    let signatures = signatures
        .iter()
        .map(|s| s.parse::<DetachedSignature>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(exit::USAGE, format!("--signature: {e}")))?;
    let written = connect
        .client()?
        .update_signed(&yaml, signatures)
        .await
        .map_err(client_error)?;
    if json {
        print_json(&written)
    } else {
        println!("written {} {}", written.name, written.hash);
        Ok(())
    }
}

/// `cloister cas approve ID` / `reject ID`: signs the proposal's change with `--key`. When
/// the CAS shows the proposed session unredacted, its hash and predecessor are checked against
/// the change first, so the key signs what it was shown.
pub async fn vote(id: &str, vote: Vote, connect: &CasConnect, json: bool) -> anyhow::Result<()> {
    let key = connect
        .key_path()
        .ok_or_else(|| fail(exit::USAGE, "give the voting key with --key"))?;
    let identity = ClientIdentity::load(key).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let client = connect.client()?;
    let proposal = client.proposal(id).await.map_err(client_error)?;
    if let (Some(yaml), false) = (&proposal.yaml, proposal.redacted) {
        let shown = change_of(yaml)?;
        if shown != proposal.change {
            return Err(fail(
                exit::FAILURE,
                format!(
                    "proposal {id}'s session text hashes to {} (predecessor {:?}), not to the change it \
                     names: not signing",
                    shown.hash, shown.predecessor
                ),
            ));
        }
    }
    let signature = identity
        .sign_vote(&proposal.change, vote)
        .map_err(|e| fail(exit::INVALID, e))?;
    let after = client.vote(id, vote, signature).await.map_err(client_error)?;
    if json {
        print_json(&after)
    } else {
        let verb = match vote {
            Vote::Approve => "approved",
            Vote::Reject => "rejected",
        };
        println!("{verb} {id}: {}", after.state);
        Ok(())
    }
}

/// `cloister cas proposals ls|show`.
pub async fn proposals(command: ProposalsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        ProposalsCommand::Ls { prefix, connect } => {
            let list = connect.client()?.proposals(&prefix).await.map_err(client_error)?;
            if json {
                return print_json(&list);
            }
            for p in list {
                println!(
                    "{}  {}  {}  {} approval(s)  {}",
                    p.id,
                    p.change.session,
                    p.state,
                    p.approvals.len(),
                    p.change.hash
                );
            }
            Ok(())
        }
        ProposalsCommand::Show { id, connect } => {
            let p = connect.client()?.proposal(&id).await.map_err(client_error)?;
            print_proposal(&p, json)
        }
    }
}

/// `cloister cas session history NAME`.
pub async fn history(name: &str, connect: &CasConnect, json: bool) -> anyhow::Result<()> {
    let versions = connect.client()?.history(name).await.map_err(client_error)?;
    if json {
        return print_json(&versions);
    }
    for v in versions {
        println!("version {}  {}", v.version, v.hash);
        println!("  predecessor  {}", v.predecessor.as_deref().unwrap_or("(none)"));
        println!("  applied      {} by {}", v.applied, v.submitted_by);
        if let Some(proposal) = &v.proposal {
            println!("  proposal     {proposal}");
        }
        for a in &v.approvals {
            println!("  approved by  {}", a.key);
        }
    }
    Ok(())
}

/// Why `proposed` does not keep what `current` runs and holds: every service with the same
/// attestation alternatives (no service added or removed) and the same secrets (names and
/// kinds). `None` when it keeps them.
pub fn changes_code_or_secrets(
    current: &cloister_cas_session::Session,
    proposed: &cloister_cas_session::Session,
) -> Option<String> {
    use std::collections::BTreeSet;
    let services = |s: &cloister_cas_session::Session| -> BTreeSet<String> {
        s.services.iter().map(|svc| svc.name.clone()).collect()
    };
    if services(current) != services(proposed) {
        return Some(format!(
            "the services change: {:?} → {:?}",
            services(current),
            services(proposed)
        ));
    }
    for svc in &current.services {
        if proposed.service(&svc.name).map(|p| &p.attestation) != Some(&svc.attestation) {
            return Some(format!(
                "service {:?} would run other code (its measurements change)",
                svc.name
            ));
        }
    }
    let secrets =
        |s: &cloister_cas_session::Session| -> BTreeSet<(String, cloister_cas_session::SecretKind)> {
            s.secrets.iter().map(|x| (x.name.clone(), x.kind)).collect()
        };
    if secrets(current) != secrets(proposed) {
        return Some("the secret set changes".into());
    }
    None
}

/// `cloister cas check ID`: the example checker, an attested board member. It attests as
/// `--service` of `--session` with the simulation TEE, binds a fresh key to that attestation
/// (`attested:SESSION#SERVICE` on boards), reads the proposal and the version it replaces,
/// and approves only if the proposal keeps every service's measurements and the secret set,
/// rejecting it otherwise. The key lives only in this process.
pub async fn check(
    id: &str,
    session: &str,
    service: &str,
    platform: &Path,
    measurement: &str,
    connect: &CasConnect,
    json: bool,
) -> anyhow::Result<()> {
    let platform = cloister_attestation::SimPlatform::load_or_generate(platform)
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let mut m = [0u8; 32];
    hex::decode_to_slice(measurement.trim(), &mut m)
        .map_err(|_| fail(exit::USAGE, "--measurement is 64 hex digits"))?;
    let (url, pin) = connect.endpoint();
    let init = cloister_cas_client::protocol::InitData::new(pin, session, service)
        .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let source = init
        .simulated(platform, m)
        .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let anonymous = cloister_cas_client::client::CasClient::new(url, pin, None).map_err(client_error)?;
    let released = anonymous
        .attest(&init, &source, |_| {})
        .await
        .map_err(client_error)?;
    let mut seed = cloister_cas_store::Zeroizing::new([0u8; 32]);
    rand::fill(&mut seed[..]);
    let identity = ClientIdentity::from_seed(&seed);
    let client =
        cloister_cas_client::client::CasClient::new(url, pin, Some(ClientIdentity::from_seed(&seed)))
            .map_err(client_error)?;
    client
        .bind_approver(session, service, &released.volume_grant)
        .await
        .map_err(client_error)?;
    let proposal = client.proposal(id).await.map_err(client_error)?;
    let current = client
        .get_session(&proposal.change.session)
        .await
        .map_err(client_error)?;
    if proposal.change.predecessor.as_deref() != Some(current.hash.as_str()) {
        return Err(fail(
            exit::CONFLICT,
            format!(
                "proposal {id} replaces {:?}, not the current version",
                proposal.change.predecessor
            ),
        ));
    }
    let parse = |yaml: &str| {
        cloister_cas_session::parse_session(yaml).map_err(|e| fail(exit::INVALID, e.to_string()))
    };
    let proposed = parse(proposal.yaml.as_deref().unwrap_or_default())?;
    let reason = changes_code_or_secrets(&parse(&current.yaml)?, &proposed);
    let vote = if reason.is_none() {
        Vote::Approve
    } else {
        Vote::Reject
    };
    let signature = identity
        .sign_vote(&proposal.change, vote)
        .map_err(|e| fail(exit::INVALID, e))?;
    let after = client.vote(id, vote, signature).await.map_err(client_error)?;
    if json {
        print_json(&serde_json::json!({
            "proposal": id,
            "decision": vote.as_str(),
            "reason": reason,
            "key": identity.public(),
            "state": after.state,
        }))
    } else {
        match &reason {
            None => println!(
                "approve {id}: every service keeps its measurements and the secret set; {}",
                after.state
            ),
            Some(reason) => println!("reject {id}: {reason}; {}", after.state),
        }
        Ok(())
    }
}
