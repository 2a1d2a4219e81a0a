//! The example checker (`examples/checker`) end to end: a confidential service run by the
//! platform under `cloister-runtime` with the simulation TEE, an attested approver
//! (`attested:board/checks#checker`) on the board of another session. Its runtime binds a key
//! of its own and votes for the script, which approves only proposals that keep every
//! service's measurements and the secret set — and every refusal around it: another service's
//! runtime, a script that asks for more than the two requests, forged and replayed votes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::governance::{DetachedSignature, Vote};
use cloister_cas_client::sign::ClientIdentity;
use common::{Server, repo_root};
use serde_json::Value;

struct CasProcess(Child);

impl Drop for CasProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

/// A development CAS with `admin` as administrator: its process, URL and pin.
fn start_cas(dir: &Path, admin: &str) -> (CasProcess, String, String) {
    let data = dir.join("cas");
    let init: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        dir.join("cas.master").to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let (child, rx) = common::spawn_cas_serve(
        [
            "--listen",
            "127.0.0.1:0",
            "--admin",
            admin,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        Stdio::inherit(),
    );
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("CAS did not open its port");
    (
        CasProcess(child),
        url,
        init["identity_pin"].as_str().unwrap().to_owned(),
    )
}

/// The governed session: its update rule needs its owner and the attested checker.
fn governed(predecessor: Option<&str>, measurement: &str, secrets: &str, command: &str) -> String {
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    format!(
        "name: clinic/inference\n{predecessor}access_policy:\n  update:\n    all: [CREATOR, \
         \"attested:board/checks#checker\"]\nsecurity:\n  attestation:\n    tolerate: [simulation]\n\
         services:\n- name: infer\n  command: [{command}]\n  attestation:\n  - tee: sim\n    \
         measurement: {measurement}\nsecrets:\n{secrets}"
    )
}

/// A service of the FDL, at the indentation of the example's list.
fn fdl_service(name: &str, script: &str, session: &str, cas_service: &str, folder: &str) -> String {
    format!(
        "    - local:\n        name: {name}\n        image: debian:stable-slim\n        script: {script}\n        \
         confidential:\n          tee: sim\n          cas: CAS_URL\n          cas_pin: CAS_PIN\n          \
         session: {session}\n          service: {cas_service}\n          output_recipients: \
         [OWNER_RECIPIENT]\n          approver: true\n        input:\n          - storage_provider: \
         minio\n            path: {folder}/in\n        output:\n          - storage_provider: minio\n            \
         path: {folder}/out\n"
    )
}

/// What a script that is an approver but not the checker tries: anything but the two
/// requests, a vote on a proposal it was not shown, and looking for the key in its
/// environment and files.
const PROBE: &str = r#"exec /usr/bin/python3 - "$INPUT_FILE_PATH" <<'PYTHON'
import json, os, socket, sys
proposal = open(sys.argv[1]).readline().strip()
def ask(request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.environ["CLOISTER_APPROVER_SOCKET"])
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer.decode()
answers = []
for request in [b"key\n", b"seed\n", b"sign " + proposal.encode() + b"\n",
                b"approve " + proposal.encode() + b"\n", b"show ../../etc/passwd\n",
                b"show " + b"a" * 4096 + b"\n", b"\xff\xfe\n", b"show"]:
    answers.append([repr(request[:40]), ask(request)])
files = {}
for root, dirs, names in os.walk(os.environ["HOME"]):
    for name in names:
        path = os.path.join(root, name)
        try:
            files[os.path.relpath(path, os.environ["HOME"])] = open(path, "rb").read().hex()
        except OSError as e:
            files[os.path.relpath(path, os.environ["HOME"])] = "unreadable: %s" % e.strerror
out = os.path.join(os.environ["TMP_OUTPUT_DIR"], os.path.basename(sys.argv[1]) + ".probe.json")
json.dump({"answers": answers, "env": dict(os.environ), "files": files}, open(out, "w"))
PYTHON
"#;

struct World {
    dir: tempfile::TempDir,
    _cas: CasProcess,
    server: Server,
    owner_cas: CasClient,
    data_owner_key: PathBuf,
    recipients: std::collections::BTreeMap<String, String>,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let admin_key = dir.path().join("admin.key");
        let admin = ok(&cli(&["cas", "keygen", "--out", admin_key.to_str().unwrap()]))
            .trim()
            .to_owned();
        let (cas, url, pin) = start_cas(dir.path(), &admin);
        let plain = dir.path().join("plain");
        let server = Server::start(
            &dir.path().join("data"),
            &["--plain-dir", plain.to_str().unwrap()],
        );
        let info = server.get_json("/system/info").await;
        let platform_key = info["simulation_platform_key"].as_str().unwrap().to_owned();
        ok(&cli(&[
            "cas",
            "platform",
            "add",
            &platform_key,
            "--cas",
            &url,
            "--pin",
            &pin,
            "--key",
            admin_key.to_str().unwrap(),
        ]));

        // The data owner (reads the checkers' verdicts) and the example FDL, filled in, with
        // two more approvers that are not the checker: the same script in another session,
        // and a probe.
        let data_owner_key = dir.path().join("owner.x25519");
        let data_owner = ok(&cli(&["keygen", "--out", data_owner_key.to_str().unwrap()]))
            .trim()
            .to_owned();
        let example = repo_root().join("examples/checker");
        let fdl_dir = dir.path().join("fdl");
        std::fs::create_dir(&fdl_dir).unwrap();
        std::fs::copy(example.join("checker.sh"), fdl_dir.join("checker.sh")).unwrap();
        std::fs::write(fdl_dir.join("probe.sh"), PROBE).unwrap();
        let fdl = std::fs::read_to_string(example.join("fdl.yaml")).unwrap()
            + &fdl_service("rogue", "checker.sh", "board/rogue", "checker", "rogue")
            + &fdl_service("probe", "probe.sh", "board/probe", "probe", "probe");
        let fdl = fdl
            .replace("CAS_URL", &url)
            .replace("CAS_PIN", &pin)
            .replace("OWNER_RECIPIENT", &data_owner);
        let fdl_path = fdl_dir.join("fdl.yaml");
        std::fs::write(&fdl_path, fdl).unwrap();
        let applied: Value = serde_json::from_str(&ok(&server.cli(&[
            "apply",
            fdl_path.to_str().unwrap(),
            "--cas-key",
            admin_key.to_str().unwrap(),
            "--keys-dir",
            dir.path().join("keys").to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        let recipients = applied
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["service"].as_str().unwrap().to_owned(),
                    s["input_recipient"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let owner_cas = CasClient::new(&url, &pin, Some(ClientIdentity::generate())).unwrap();
        World {
            dir,
            _cas: cas,
            server,
            owner_cas,
            data_owner_key,
            recipients,
        }
    }

    /// Has `service` look at `proposal` (an upload naming it) and returns its job's status,
    /// its log and what it wrote (decrypted by the data owner), once it finished.
    async fn trigger(
        &self,
        service: &str,
        folder: &str,
        proposal: &str,
        nth: usize,
    ) -> (String, Value, String) {
        let local = self.dir.path().join("id.txt");
        std::fs::write(&local, format!("{proposal}\n")).unwrap();
        let remote = format!("{folder}/in/{proposal}.txt");
        ok(&self.server.cli(&[
            "put",
            local.to_str().unwrap(),
            &remote,
            "--encrypt",
            &self.recipients[service],
        ]));
        let jobs = self.server.wait_jobs(service, nth).await;
        for (name, job) in jobs {
            let log = self
                .server
                .get(&format!("/system/logs/{service}/{name}"))
                .await
                .text()
                .await
                .unwrap();
            if log.contains(&remote) {
                return (name, job, log);
            }
        }
        panic!("no job of {service} for {remote}");
    }

    /// The program's own output of job `name`, decrypted by the data owner.
    fn sealed_log(&self, service: &str, name: &str) -> String {
        ok(&self.server.cli(&[
            "job",
            "logs",
            service,
            name,
            "--decrypt",
            self.data_owner_key.to_str().unwrap(),
        ]))
    }

    fn output(&self, remote: &str) -> Value {
        let local = self.dir.path().join("verdict.json");
        let _ = std::fs::remove_file(&local);
        ok(&self.server.cli(&[
            "get",
            remote,
            local.to_str().unwrap(),
            "--decrypt",
            self.data_owner_key.to_str().unwrap(),
        ]));
        serde_json::from_slice(&std::fs::read(&local).unwrap()).unwrap()
    }

    /// The checker's verdict on `proposal`, after its job succeeded.
    async fn check(&self, proposal: &str, nth: usize) -> Value {
        let (_, job, log) = self.trigger("checker", "checks", proposal, nth).await;
        assert_eq!(job["status"], "Succeeded", "{log}");
        assert!(log.contains("bound as attested:board/checks#checker"), "{log}");
        self.output(&format!("checks/out/{proposal}.txt.verdict.json"))
    }

    async fn propose(&self, yaml: &str) -> String {
        let proposal = self.owner_cas.propose(yaml).await.unwrap();
        self.owner_cas.vote_on(&proposal.id, Vote::Approve).await.unwrap();
        proposal.id
    }

    async fn state(&self, proposal: &str) -> String {
        self.owner_cas.proposal(proposal).await.unwrap().state
    }
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>, status: u16) -> String {
    match result {
        Err(ClientError::Refused { status: s, message }) if s.as_u16() == status => message,
        other => panic!("expected a {status} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_checker_approves_only_changes_that_keep_code_and_secrets() {
    let world = World::start().await;
    let model = "- name: model_key\n  kind: binary\n";
    let v1 = world
        .owner_cas
        .create_session(&governed(None, &"11".repeat(32), model, "run"))
        .await
        .unwrap()
        .hash;

    // A change that keeps the measurement and the secrets (another command): approved by the
    // checker's job, and applied with its vote.
    let keeps = world
        .propose(&governed(Some(&v1), &"11".repeat(32), model, "run, --fast"))
        .await;
    assert_eq!(world.state(&keeps).await, "pending");
    let verdict = world.check(&keeps, 1).await;
    assert_eq!(verdict["decision"], "approve", "{verdict}");
    assert_eq!(verdict["state"], "applied", "{verdict}");
    let history = world.owner_cas.history("clinic/inference").await.unwrap();
    let v2 = history[1].hash.clone();
    let checker_vote = history[1]
        .approvals
        .iter()
        .find(|a| a.key == verdict["key"].as_str().unwrap())
        .unwrap_or_else(|| panic!("the checker's key is not among {:?}", history[1].approvals))
        .clone();

    // Another measurement: rejected, and the rule can no longer be met.
    let other_code = world
        .propose(&governed(Some(&v2), &"22".repeat(32), model, "run, --fast"))
        .await;
    let verdict = world.check(&other_code, 2).await;
    assert_eq!(verdict["decision"], "reject", "{verdict}");
    assert!(
        verdict["reason"]
            .as_str()
            .unwrap()
            .contains("measurements change"),
        "{verdict}"
    );
    assert_eq!(verdict["state"], "rejected", "{verdict}");

    // Another secret set: rejected too.
    let more_secrets = world
        .propose(&governed(
            Some(&v2),
            &"11".repeat(32),
            &format!("{model}- name: extra\n  kind: ascii\n"),
            "run, --fast",
        ))
        .await;
    let verdict = world.check(&more_secrets, 3).await;
    assert_eq!(verdict["decision"], "reject", "{verdict}");
    assert!(
        verdict["reason"].as_str().unwrap().contains("secret set"),
        "{verdict}"
    );
    assert_eq!(verdict["state"], "rejected", "{verdict}");

    // The owner alone cannot bypass the checker.
    let bypass = governed(Some(&v2), &"22".repeat(32), model, "run");
    let message = refused(
        world.owner_cas.update_session("clinic/inference", &bypass).await,
        403,
    );
    assert!(message.contains("do not meet"), "{message}");

    // A harmless change waits for the checker; nothing else can stand in for it.
    let harmless = world
        .propose(&governed(Some(&v2), &"11".repeat(32), model, "run"))
        .await;
    // The same script as another service (another session's approver): its runtime binds a
    // key, but not as the checker: the CAS shows it nothing and the job fails.
    let (name, job, log) = world.trigger("rogue", "rogue", &harmless, 1).await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("bound as attested:board/rogue#checker"), "{log}");
    assert!(
        log.contains(&format!("approver could not show proposal {harmless}")),
        "{log}"
    );
    let sealed = world.sealed_log("rogue", &name);
    assert!(sealed.contains("not allowed to see proposal"), "{sealed}");
    assert_eq!(world.state(&harmless).await, "pending");

    // The checker's recorded vote, replayed on another change, and a forged one: refused.
    let replayed = DetachedSignature {
        key: checker_vote.key.clone(),
        signature: checker_vote.signature.clone(),
    };
    refused(
        world.owner_cas.vote(&harmless, Vote::Approve, replayed).await,
        403,
    );
    let mut forged_bytes = hex::decode(&checker_vote.signature).unwrap();
    forged_bytes[7] ^= 1;
    let forged = DetachedSignature {
        key: checker_vote.key.clone(),
        signature: hex::encode(forged_bytes),
    };
    refused(world.owner_cas.vote(&harmless, Vote::Approve, forged).await, 403);
    // A vote of the checker's earlier run is no more than that: every run binds a key of its
    // own, and an unknown key's signature is not the checker's either.
    let stranger = ClientIdentity::generate();
    let change = world.owner_cas.proposal(&harmless).await.unwrap().change;
    let mut stranger_vote = stranger.sign_vote(&change, Vote::Approve).unwrap();
    stranger_vote.key = checker_vote.key.clone();
    refused(
        world
            .owner_cas
            .vote(&harmless, Vote::Approve, stranger_vote)
            .await,
        403,
    );
    assert_eq!(world.state(&harmless).await, "pending");

    // A script with the capability gets nothing but the two requests, and no key.
    let (_, job, log) = world.trigger("probe", "probe", &harmless, 1).await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    let probe = world.output(&format!("probe/out/{harmless}.txt.probe.json"));
    let answers = probe["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 8, "{probe}");
    for pair in answers {
        let (request, answer) = (&pair[0], pair[1].as_str().unwrap());
        let answer: Value = serde_json::from_str(answer.trim())
            .unwrap_or_else(|_| panic!("{request}: not one JSON line: {answer:?}"));
        assert!(answer["error"].is_string(), "{request}: {answer}");
    }
    assert!(
        answers[3][1].as_str().unwrap().contains("was not shown"),
        "{probe}"
    );
    // Its environment is the OSCAR contract and the socket's path: no key, seed or grant.
    let env = probe["env"].as_object().unwrap();
    assert!(
        env["CLOISTER_APPROVER_SOCKET"]
            .as_str()
            .unwrap()
            .ends_with("/approver.sock")
    );
    let expected = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "PWD",
        "CLOISTER_FILES",
        "CLOISTER_APPROVER_SOCKET",
        "TMP_INPUT_DIR",
        "TMP_OUTPUT_DIR",
        "EVENT",
        "EVENT_FILE",
        "EVENT_TIME",
        "JOB_UUID",
        "JOB_NAME",
        "OSCAR_SERVICE_NAME",
        "INPUT_FILE_PATH",
        "STORAGE_OBJECT_KEY",
    ];
    for name in env.keys() {
        assert!(
            expected.contains(&name.as_str()),
            "{name} reached the script: {env:?}"
        );
    }
    // The only files in its folder: the runtime's lock, the event, the socket, the injected
    // script and the input.
    let files: std::collections::BTreeSet<&str> = probe["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let input = format!("input/{harmless}.txt");
    let expected = [
        ".lock",
        "event.json",
        "approver.sock",
        "files/cloister/script.sh",
        &input,
    ];
    assert_eq!(files, expected.into_iter().collect(), "{probe}");
    assert_eq!(world.state(&harmless).await, "pending");

    // The checker's own run applies it.
    let verdict = world.check(&harmless, 4).await;
    assert_eq!(verdict["decision"], "approve", "{verdict}");
    assert_eq!(verdict["state"], "applied", "{verdict}");
    // Its vote cannot be submitted a second time.
    let history = world.owner_cas.history("clinic/inference").await.unwrap();
    assert_eq!(history.len(), 3);
    let again = history[2]
        .approvals
        .iter()
        .find(|a| a.key == verdict["key"].as_str().unwrap())
        .unwrap()
        .clone();
    let again = DetachedSignature {
        key: again.key,
        signature: again.signature,
    };
    let closed = world.owner_cas.vote(&harmless, Vote::Approve, again).await;
    assert!(closed.is_err(), "{closed:?}");
    // No plaintext folder is left behind.
    assert!(common::files_under(&world.dir.path().join("plain")).is_empty());
}
