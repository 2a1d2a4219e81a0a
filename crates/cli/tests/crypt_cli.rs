//! `cloister keygen` / `encrypt` / `decrypt` with sender authentication, on this computer only
//! (no server): the owner's `--sender`, the reader's `--expect-sender`, and their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let path = path.to_str().unwrap().to_owned();
    let (recipient, _) = ok(&cli(&["keygen", "--out", &path]));
    (path, recipient.trim().to_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sender_is_authenticated_and_required_senders_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (owner_key, owner) = keygen(d, "owner.key");
    let (service_key, service) = keygen(d, "service.key");
    let (stranger_key, stranger) = keygen(d, "stranger.key");
    let plain = d.join("scan.txt");
    std::fs::write(&plain, b"patient 0001\n".repeat(1000)).unwrap();
    let object = ["--bucket", "input", "--key", "scans/0001.txt"];

    let seal = |sender: Option<&str>, out: &Path| {
        let mut args = vec!["encrypt", s(&plain), s(out), "-r", &service];
        args.extend(object);
        if let Some(sender) = sender {
            args.extend(["--sender", sender]);
        }
        cli(&args)
    };
    let open = |input: &Path, out: &Path, expect: &[&str], json: bool| {
        let mut args = vec!["decrypt", s(input), s(out), "-i", &service_key];
        args.extend(object);
        for e in expect {
            args.extend(["--expect-sender", e]);
        }
        if json {
            args.push("--json");
        }
        cli(&args)
    };

    let from_owner = d.join("from-owner.clst");
    ok(&seal(Some(&owner_key), &from_owner));

    // Required and present: decrypted, and the sender is named.
    let back = d.join("back.txt");
    let (_, stderr) = ok(&open(&from_owner, &back, &[&owner], false));
    assert!(
        stderr.contains(&format!("authenticated from {owner}")),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&plain).unwrap());
    // Any one of several expected senders suffices; --json reports the sender.
    let back_json = d.join("back-json.txt");
    let (stdout, _) = ok(&open(&from_owner, &back_json, &[&stranger, &owner], true));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["sender"], owner.as_str(), "{report}");
    // Nothing required: still decrypted and reported.
    let (_, stderr) = ok(&open(&from_owner, &d.join("any.txt"), &[], false));
    assert!(
        stderr.contains(&format!("authenticated from {owner}")),
        "{stderr}"
    );

    // Encrypted without a sender (what anyone knowing the service's recipient can do): accepted
    // only when no sender is required, and reported as not authenticated.
    let anonymous = d.join("anonymous.clst");
    ok(&seal(None, &anonymous));
    let (_, stderr) = ok(&open(&anonymous, &d.join("anon.txt"), &[], false));
    assert!(stderr.contains("sender not authenticated"), "{stderr}");
    let refused = d.join("refused.txt");
    let out = open(&anonymous, &refused, &[&owner], false);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sender not authenticated"));
    assert!(!refused.exists(), "a refused object left a plaintext file");

    // Another sender: refused.
    let from_stranger = d.join("from-stranger.clst");
    ok(&seal(Some(&stranger_key), &from_stranger));
    let out = open(&from_stranger, &refused, &[&owner], false);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!refused.exists());

    // A bad expected sender or sender key file is refused before anything is read or written.
    let out = open(&from_owner, &refused, &["cloister1x25519:nothex"], false);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = seal(Some(s(&d.join("missing.key"))), &d.join("never.clst"));
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("never.clst").exists());

    // age cannot authenticate a sender: the combination is a usage error, not a silent drop.
    let out = cli(&[
        "encrypt",
        s(&plain),
        s(&d.join("export.age")),
        "--format",
        "age",
        "-r",
        &service,
        "--sender",
        &owner_key,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("export.age").exists());
    // Without --sender the age export still works.
    ok(&cli(&[
        "encrypt",
        s(&plain),
        s(&d.join("export.age")),
        "--format",
        "age",
        "-r",
        &service,
    ]));
}
