//! `cloister-bench governance`: a session governed by a board of N keys (`at_least: N` of
//! them), changed again and again through proposals, against a private CAS
//! (`cloister cas serve`) in its own process.
//!
//! One change is: propose the next version (one signed request, one durable transaction), then
//! N approvals, each signed over the change by its own key and submitted as its own signed
//! request; the last one applies the version in the transaction that records it. The figures
//! are the whole change (propose → applied), the proposal alone, one approval that does not
//! complete the rule, and the completing approval with the apply, per N, as medians over the
//! changes of a round; the table shows the rounds' median and range.

use std::time::{Duration, Instant};

use anyhow::Context;
use cloister_cas_client::client::CasClient;
use cloister_cas_client::governance::Vote;
use cloister_cas_client::sign::ClientIdentity;
use serde_json::json;

use crate::process::{CloisterBin, load_average, spinner, start_cas};
use crate::stats::{Metrics, ms, percentile};

/// Sizes of the governance benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct GovernanceArgs {
    /// Rounds; the table shows the median of the rounds with their range.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Changes (proposal + approvals + apply) per board size and round.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Board sizes: every member must approve (`at_least: N` of N).
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 10])]
    pub board: Vec<usize>,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

impl GovernanceArgs {
    fn validate(&self) -> anyhow::Result<()> {
        crate::stats::require_at_least_one(&[(self.rounds, "--rounds"), (self.changes, "--changes")])?;
        anyhow::ensure!(
            !self.board.is_empty() && self.board.iter().all(|n| (1..=64).contains(n)),
            "--board sizes are between 1 and 64"
        );
        Ok(())
    }
}

/// A governed session and its board's members, each with its own connection.
struct Board {
    name: String,
    /// Each member's connection (signed with its key) and its key again, to sign votes.
    members: Vec<(CasClient, ClientIdentity)>,
    keys: Vec<String>,
    hash: String,
    version: u64,
}

impl Board {
    fn yaml(&self, predecessor: Option<&str>) -> String {
        let predecessor = predecessor
            .map(|p| format!("predecessor: {p}\n"))
            .unwrap_or_default();
        format!(
            "name: {}\n{predecessor}access_policy:\n  update:\n    at_least: {}\n    of: [{}]\nsecurity:\n  \
             attestation:\n    tolerate: [simulation]\n    mode: none\nservices:\n- name: worker\n  command: [run, \
             v{}]\nsecrets:\n- name: key\n  kind: binary\n",
            self.name,
            self.keys.len(),
            self.keys.join(", "),
            self.version
        )
    }

    /// One change through a proposal; returns (whole, propose, one approval, last approval +
    /// apply), the approval figure being the median of the non-completing ones.
    async fn change(&mut self) -> anyhow::Result<[Duration; 4]> {
        self.version += 1;
        let yaml = self.yaml(Some(&self.hash));
        let started = Instant::now();
        let proposal = self.members[0].0.propose(&yaml).await?;
        let proposed = started.elapsed();
        let mut approvals = Vec::new();
        let mut last = Duration::ZERO;
        for (i, (member, identity)) in self.members.iter().enumerate() {
            let signature = identity
                .sign_vote(&proposal.change, Vote::Approve)
                .map_err(|e| anyhow::anyhow!(e))?;
            let t = Instant::now();
            let after = member.vote(&proposal.id, Vote::Approve, signature).await?;
            let took = t.elapsed();
            if i + 1 == self.members.len() {
                anyhow::ensure!(
                    after.state == "applied",
                    "the last approval left it {}",
                    after.state
                );
                last = took;
            } else {
                anyhow::ensure!(after.state == "pending", "applied before the last approval");
                approvals.push(took);
            }
        }
        let whole = started.elapsed();
        self.hash = proposal.change.hash;
        approvals.sort();
        let approval = percentile(&approvals, 50.0).unwrap_or_default();
        Ok([whole, proposed, approval, last])
    }
}

async fn board(url: &str, pin: &str, name: &str, size: usize) -> anyhow::Result<Board> {
    let mut members = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..size {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        keys.push(ClientIdentity::from_seed(&seed).public());
        members.push((
            CasClient::new(url, pin, Some(ClientIdentity::from_seed(&seed)))?,
            ClientIdentity::from_seed(&seed),
        ));
    }
    let mut board = Board {
        name: name.to_owned(),
        members,
        keys,
        hash: String::new(),
        version: 0,
    };
    board.hash = board.members[0].0.create_session(&board.yaml(None)).await?.hash;
    Ok(board)
}

pub async fn run(args: GovernanceArgs, json: bool) -> anyhow::Result<()> {
    args.validate()?;
    let cloister = args.cloister_bin.path()?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    let admin = ClientIdentity::generate();
    let cas = start_cas(&cloister, dir.path(), &admin.public(), None)?;
    let mut boards = Vec::new();
    for &size in &args.board {
        let mut b = board(&cas.url, &cas.pin, &format!("board{size}/bench"), size).await?;
        // Connections opened and the session cached before anything counts.
        b.change().await?;
        boards.push(b);
    }
    let mut metrics = Metrics::default();
    for round in 0..args.rounds {
        for b in &mut boards {
            let n = b.members.len();
            let bar = spinner(
                json,
                &format!("round {}/{}: board of {n}", round + 1, args.rounds),
            );
            let mut samples: [Vec<Duration>; 4] = Default::default();
            for _ in 0..args.changes {
                for (all, one) in samples.iter_mut().zip(b.change().await?) {
                    all.push(one);
                }
            }
            bar.finish_and_clear();
            let labels = [
                ("change_ms", format!("N={n}: proposal + {n} approvals + apply")),
                ("propose_ms", format!("N={n}:   proposal")),
                ("approve_ms", format!("N={n}:   one approval (rule not met)")),
                ("apply_ms", format!("N={n}:   last approval + apply")),
            ];
            for ((key, label), mut values) in labels.into_iter().zip(samples) {
                values.sort();
                metrics.record(
                    format!("n{n}_{key}_p50"),
                    format!("{label} p50"),
                    "ms",
                    percentile(&values, 50.0).map_or(0.0, ms),
                );
            }
        }
    }
    drop(boards);
    cas.stop().await?;
    let load_after = load_average();
    if json {
        let out = json!({
            "command": "governance",
            "cloister_bin": cloister.display().to_string(),
            "cpus": cpus,
            "load_average": {"before": load_before, "after": load_after},
            "rounds": args.rounds,
            "parameters": {"changes": args.changes, "board": args.board},
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cloister governance bench — {cpus} CPUs, load {} before / {} after, CAS in its own process, {} rounds \
         of {} changes (median of each round; median and min–max of the rounds)",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.rounds,
        args.changes,
    );
    metrics.print_table();
    Ok(())
}
