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
