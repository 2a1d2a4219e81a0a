//! Encrypted objects on the command line: keys, `encrypt`/`decrypt`, and `put --encrypt` /
//! `get --decrypt`, which encrypt and decrypt on this computer so storage sees only ciphertext.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cloister_crypt::{AgeRecipient, Decrypted, EncryptOptions, Identity, ObjectBinding, Recipient};

use crate::client::{Client, exit, fail, split_object_path};

#[derive(clap::Args)]
pub struct EncryptArgs {
    /// Plaintext file (`-` for stdin).
    input: PathBuf,
    /// Ciphertext file (`-` for stdout).
    output: PathBuf,
    /// A recipient (`cloister1x25519:…`, or `age1…` with `--format age`); repeatable.
    #[arg(long = "recipient", short = 'r', required = true)]
    recipients: Vec<String>,
    /// The bucket the object will be stored in (bound into the ciphertext).
    #[arg(long, required_unless_present = "format")]
    bucket: Option<String>,
    /// The object key it will be stored under (bound into the ciphertext).
    #[arg(long, required_unless_present = "format")]
    key: Option<String>,
    /// `age` writes a stock age file instead (no bucket/key binding), for recipients using
    /// `age`/`rage`.
    #[arg(long, value_parser = ["cloister", "age"])]
    format: Option<String>,
    /// Plaintext bytes per chunk.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    /// Authenticate the object as sent by this identity file (`cloister keygen`): recipients
    /// can then require it (`decrypt --expect-sender`). Not with `--format age`.
    #[arg(long, value_name = "KEYFILE")]
    sender: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// Ciphertext file (`-` for stdin).
    input: PathBuf,
    /// Plaintext file (`-` for stdout).
    output: PathBuf,
    /// Identity file (from `cloister keygen`).
    #[arg(long, short = 'i')]
    identity: PathBuf,
    /// The bucket the object was stored in.
    #[arg(long)]
    bucket: String,
    /// The object key it was stored under.
    #[arg(long)]
    key: String,
    /// Refuse the object unless it is authenticated by this sender (`cloister1x25519:…`);
    /// repeatable, any one of them suffices.
    #[arg(long = "expect-sender", value_name = "RECIPIENT")]
    expect_senders: Vec<String>,
}

fn crypt_error(e: cloister_crypt::CryptError) -> anyhow::Error {
    fail(exit::INVALID, e.to_string())
}

fn open_input(path: &Path) -> anyhow::Result<Box<dyn std::io::Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

/// Writes to `path` through a temporary file renamed into place on success, so a failed
/// decryption never leaves partial plaintext behind under the final name.
fn write_output(path: &Path, f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        f(&mut out)?;
        return Ok(out.flush()?);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        f(&mut out)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn parse_recipients(list: &[String], what: &str) -> anyhow::Result<Vec<Recipient>> {
    list.iter()
        .map(|r| {
            r.parse::<Recipient>()
                .map_err(|e| fail(exit::INVALID, format!("{what} {r:?}: {e}")))
        })
        .collect()
}

/// The recipients of `list`, each authenticating the identity in `sender` when there is one.
fn recipients(list: &[String], sender: Option<&Path>) -> anyhow::Result<Vec<Recipient>> {
    let recipients = parse_recipients(list, "recipient")?;
    let Some(path) = sender else {
        return Ok(recipients);
    };
    let sender =
        Identity::load(path).map_err(|e| fail(exit::INVALID, format!("sender {}: {e}", path.display())))?;
    recipients
        .iter()
        .map(|r| r.authenticated_by(&sender).map_err(crypt_error))
        .collect()
}

/// How a decryption's sender reads in messages: `authenticated from <key>` or not.
fn sender_report(decrypted: &Decrypted) -> String {
    match &decrypted.sender {
        Some(sender) => format!("authenticated from {sender}"),
        None => "sender not authenticated".to_owned(),
    }
}

fn sender_json(decrypted: &Decrypted) -> serde_json::Value {
    decrypted
        .sender
        .as_ref()
        .map_or(serde_json::Value::Null, |s| s.to_string().into())
}

pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let identity = Identity::generate();
    identity.save(out).map_err(crypt_error)?;
    println!("{}", identity.public());
    Ok(())
}

pub fn encrypt(args: EncryptArgs) -> anyhow::Result<()> {
    let input = open_input(&args.input)?;
    if args.format.as_deref() == Some("age") {
        if args.sender.is_some() {
            return Err(fail(
                exit::USAGE,
                "--sender cannot be used with --format age: age files cannot authenticate a sender",
            ));
        }
        let recipients: Vec<AgeRecipient> = args
            .recipients
            .iter()
            .map(|r| {
                r.parse::<AgeRecipient>()
                    .ok()
                    .or_else(|| {
                        r.parse::<Recipient>()
                            .ok()
                            .and_then(|c| AgeRecipient::from_recipient(&c))
                    })
                    .ok_or_else(|| fail(exit::INVALID, format!("{r:?} is not an age or X25519 recipient")))
            })
            .collect::<anyhow::Result<_>>()?;
        return write_output(&args.output, |out| {
            cloister_crypt::encrypt_age(input, out, &recipients)
                .map(|_| ())
                .map_err(crypt_error)
        });
    }
    let binding = ObjectBinding {
        bucket: args.bucket.unwrap_or_default(),
        key: args.key.unwrap_or_default(),
    };
    let recipients = recipients(&args.recipients, args.sender.as_deref())?;
    let options = EncryptOptions {
        chunk_size: args.chunk_size,
    };
    write_output(&args.output, |out| {
        cloister_crypt::encrypt(input, out, &recipients, &binding, &options)
            .map(|_| ())
            .map_err(crypt_error)
    })
}

pub fn decrypt(args: DecryptArgs, json: bool) -> anyhow::Result<()> {
    let identity = Identity::load(&args.identity).map_err(crypt_error)?;
    let expected = parse_recipients(&args.expect_senders, "expected sender")?;
    let binding = ObjectBinding {
        bucket: args.bucket,
        key: args.key,
    };
    let input = open_input(&args.input)?;
    let mut decrypted = None;
    write_output(&args.output, |out| {
        decrypted = Some(decrypt_from(input, out, &identity, &binding, &expected)?);
        Ok(())
    })?;
    let Some(decrypted) = decrypted else {
        return Err(fail(exit::FAILURE, "decryption did not run"));
    };
    // The plaintext may be on stdout: the report then goes to stderr only.
    if json && args.output != Path::new("-") {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"decrypted": true, "size": decrypted.len, "sender": sender_json(&decrypted)})
            )?
        );
    } else {
        eprintln!("decrypted {} bytes, {}", decrypted.len, sender_report(&decrypted));
    }
    Ok(())
}

fn decrypt_from(
    input: impl std::io::Read,
    out: &mut dyn Write,
    identity: &Identity,
    binding: &ObjectBinding,
    expected: &[Recipient],
) -> anyhow::Result<Decrypted> {
    cloister_crypt::decrypt_from(input, out, identity.into(), binding, expected).map_err(crypt_error)
}

pub async fn put(
    client: &Client,
    local: &Path,
    remote: &str,
    encrypt_to: &[String],
    sender: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    if encrypt_to.is_empty() {
        return crate::commands::put(client, local, remote, json).await;
    }
    let (bucket, key) = crate::commands::object_target(local, remote);
    let recipients = recipients(encrypt_to, sender)?;
    let binding = ObjectBinding {
        bucket: bucket.to_owned(),
        key: key.clone(),
    };
    let sealed = tempfile::Builder::new().prefix(".cloister-sealed-").tempfile()?;
    {
        let input = open_input(local)?;
        let mut out = BufWriter::with_capacity(1 << 20, sealed.as_file());
        cloister_crypt::encrypt(input, &mut out, &recipients, &binding, &EncryptOptions::default())
            .map_err(crypt_error)?;
        out.flush()?;
    }
    let size = crate::commands::upload(client, sealed.path(), bucket, &key, json).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"bucket": bucket, "key": key, "size": size, "encrypted": true,
                    "authenticated": sender.is_some()})
            )?
        );
    } else {
        eprintln!(
            "encrypted {} and uploaded it to {bucket}/{key} ({size} bytes)",
            local.display()
        );
    }
    Ok(())
}

pub async fn get(
    client: &Client,
    remote: &str,
    local: Option<&Path>,
    decrypt_with: Option<&Path>,
    expect_senders: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let Some(identity_file) = decrypt_with else {
        return crate::commands::get(client, remote, local, json).await;
    };
    let identity = Identity::load(identity_file).map_err(crypt_error)?;
    let expected = parse_recipients(expect_senders, "expected sender")?;
    let (bucket, key) = split_object_path(remote);
    let sealed = tempfile::Builder::new().prefix(".cloister-sealed-").tempfile()?;
    let sealed_path = sealed.path().to_path_buf();
    crate::commands::download(client, remote, Some(&sealed_path), true).await?;
    let default_name = PathBuf::from(key.rsplit('/').next().unwrap_or(key));
    let dest = local.map_or(default_name, Path::to_path_buf);
    let binding = ObjectBinding {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    };
    let mut decrypted = None;
    write_output(&dest, |out| {
        let input = open_input(&sealed_path)?;
        decrypted = Some(decrypt_from(input, out, &identity, &binding, &expected)?);
        Ok(())
    })?;
    let Some(decrypted) = decrypted else {
        return Err(fail(exit::FAILURE, "decryption did not run"));
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"bucket": bucket, "key": key, "file": dest,
                "decrypted": true, "sender": sender_json(&decrypted)}))?
        );
    } else if dest != Path::new("-") {
        eprintln!(
            "downloaded and decrypted {bucket}/{key} to {} ({})",
            dest.display(),
            sender_report(&decrypted)
        );
    } else {
        eprintln!("{}", sender_report(&decrypted));
    }
    Ok(())
}
