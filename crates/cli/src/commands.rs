//! The client commands.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{Client, exit, fail, split_object_path};

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn apply(
    client: &Client,
    fdl_path: &Path,
    cas_key: Option<&Path>,
    keys_dir: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(fdl_path).with_context(|| format!("cannot read {}", fdl_path.display()))?;
    let base = fdl_path.parent().unwrap_or(Path::new("."));
    let fdl = cloister_platform::fdl::parse_fdl(&text, Some(base))
        .map_err(|e| fail(exit::INVALID, format!("{}: {e}", fdl_path.display())))?;
    for warning in &fdl.warnings {
        eprintln!("warning: {warning}");
    }
    let sessions: Vec<&str> = fdl
        .services
        .iter()
        .filter_map(|s| s.confidential.as_ref().map(|c| c.session.as_str()))
        .collect();
    if let Some(dup) = sessions
        .iter()
        .enumerate()
        .find(|(i, s)| sessions[..*i].contains(s))
    {
        return Err(fail(
            exit::INVALID,
            format!(
                "two confidential services name the session {:?}; give each its own",
                dup.1
            ),
        ));
    }
    let mut results = Vec::new();
    for service in &fdl.services {
        // Confidential services get their session first: the platform copy carries no secret.
        let (service, applied) = if service.confidential.is_some() {
            let (copy, applied) = crate::confidential::apply_session(service, cas_key, keys_dir).await?;
            (std::borrow::Cow::Owned(copy), Some(applied))
        } else {
            (std::borrow::Cow::Borrowed(service), None)
        };
        let body = serde_json::to_value(&*service)?;
        let action = if client.service_exists(&service.name).await? {
            client
                .system(Method::PUT, "/system/services", Some(&body))
                .await?;
            "updated"
        } else {
            client
                .system(Method::POST, "/system/services", Some(&body))
                .await?;
            "created"
        };
        let mut result = json!({"service": service.name, "action": action});
        if let Some(a) = &applied {
            result["session"] = json!({
                "name": a.session, "hash": a.hash, "action": a.action, "measurement": a.measurement,
            });
            result["input_recipient"] = json!(a.input_recipient);
            if let Some((register, value)) = &a.launch_register {
                result["launch"] = json!({"register": register, "value": value});
            }
        }
        if !json {
            println!("{action} service {}", service.name);
            if let Some(a) = &applied {
                println!(
                    "  CAS session {} {} (measurement {}); secrets and keys are held by the CAS only",
                    a.session, a.action, a.measurement
                );
                println!("  data owners encrypt inputs to: {}", a.input_recipient);
                if let Some((register, value)) = &a.launch_register {
                    println!(
                        "  launch its TEEs with {register} = {value} (the runtime refuses anything else)"
                    );
                }
            }
        }
        results.push(result);
    }
    if json {
        print_json(&Value::Array(results))?;
    }
    Ok(())
}

pub async fn service_ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let services = client.get_json("/system/services").await?;
    if json {
        return print_json(&services);
    }
    println!(
        "{:<40} {:<8} {:<8} {:<12} IMAGE",
        "NAME", "CPU", "MEMORY", "INPUTS"
    );
    for s in services.as_array().into_iter().flatten() {
        let inputs: Vec<&str> = s["input"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["path"].as_str())
            .collect();
        println!(
            "{:<40} {:<8} {:<8} {:<12} {}",
            s["name"].as_str().unwrap_or(""),
            s["cpu"].as_str().unwrap_or(""),
            s["memory"].as_str().unwrap_or(""),
            inputs.join(","),
            s["image"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn service_get(client: &Client, name: &str) -> anyhow::Result<()> {
    print_json(&client.get_json(&format!("/system/services/{name}")).await?)
}

pub async fn service_rm(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .system(Method::DELETE, &format!("/system/services/{name}"), None)
        .await?;
    eprintln!("deleted service {name}");
    Ok(())
}

pub async fn run(
    client: &Client,
    service: &str,
    input: Option<&Path>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let svc = client.get_json(&format!("/system/services/{service}")).await?;
    let token = svc["token"]
        .as_str()
        .ok_or_else(|| fail(exit::FAILURE, "the service has no token"))?;
    let body = match input {
        Some(path) => {
            let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            B64.encode(raw).into_bytes()
        }
        None => Vec::new(),
    };
    let response = match client.invoke(&format!("/run/{service}"), token, body).await {
        Err(e)
            if e.downcast_ref::<crate::client::Exit>()
                .is_some_and(|x| x.code == exit::UNAVAILABLE) =>
        {
            return Err(fail(exit::JOB_FAILED, format!("the invocation failed: {e}")));
        }
        other => other?,
    };
    let kind = response
        .headers()
        .get("x-cloister-output")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("file")
        .to_owned();
    let text = response.bytes().await.context("cannot read the answer")?;
    let content = if kind == "stdout" {
        text.to_vec()
    } else {
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        B64.decode(compact).context("the answer is not base64")?
    };
    match output {
        Some(path) => {
            std::fs::write(path, &content).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => std::io::Write::write_all(&mut std::io::stdout(), &content)?,
    }
    Ok(())
}

pub async fn job_ls(client: &Client, service: &str, json: bool) -> anyhow::Result<()> {
    let all = list_jobs(client, service).await?;
    if json {
        return print_json(&Value::Object(all));
    }
    println!(
        "{:<75} {:<10} {:<26} {:<26} FINISHED",
        "JOB", "STATUS", "CREATED", "STARTED"
    );
    for (name, job) in &all {
        println!(
            "{:<75} {:<10} {:<26} {:<26} {}",
            name,
            job["status"].as_str().unwrap_or(""),
            job["creation_time"].as_str().unwrap_or("-"),
            job["start_time"].as_str().unwrap_or("-"),
            job["finish_time"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

/// Every job of a service, by name, across the listing's pages.
async fn list_jobs(client: &Client, service: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut all = serde_json::Map::new();
    let mut page = String::new();
    loop {
        let answer = client
            .get_json(&format!("/system/logs/{service}?page={page}&limit=1000"))
            .await?;
        if let Some(jobs) = answer["jobs"].as_object() {
            all.extend(jobs.clone());
        }
        match answer["next_page"].as_str() {
            Some(next) if !next.is_empty() => page = next.to_owned(),
            _ => break,
        }
    }
    Ok(all)
}

/// The name of a service's most recently created job.
pub async fn latest_job(client: &Client, service: &str) -> anyhow::Result<String> {
    let jobs = list_jobs(client, service).await?;
    // RFC 3339 times in UTC compare as text; job names break ties so the choice is stable.
    jobs.iter()
        .max_by_key(|(name, job)| {
            (
                job["creation_time"].as_str().unwrap_or_default().to_owned(),
                *name,
            )
        })
        .map(|(name, _)| name.clone())
        .ok_or_else(|| fail(exit::NOT_FOUND, format!("service {service} has no jobs")))
}

/// Polls a job until it has finished: Ok when it succeeded, exit 8 when it failed, exit 1
/// after `timeout`.
pub async fn job_wait(
    client: &Client,
    service: &str,
    job: Option<&str>,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let job = match job {
        Some(job) => job.to_owned(),
        None => loop {
            // An upload's job is recorded as the upload is acknowledged, but a caller may
            // start waiting before the upload that creates it.
            match latest_job(client, service).await {
                Ok(job) => break job,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        },
    };
    loop {
        let jobs = list_jobs(client, service).await?;
        let Some(record) = jobs.get(&job) else {
            return Err(fail(
                exit::NOT_FOUND,
                format!("no job {job} in service {service}"),
            ));
        };
        let status = record["status"].as_str().unwrap_or_default();
        if matches!(status, "Succeeded" | "Failed") {
            if json {
                print_json(&json!({"job": job, "status": status}))?;
            } else {
                println!("{job} {status}");
            }
            return if status == "Succeeded" {
                Ok(())
            } else {
                Err(fail(
                    exit::JOB_FAILED,
                    format!("job {job} failed (see `cloister job logs {service} {job}`)"),
                ))
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(
                exit::FAILURE,
                format!(
                    "job {job} is still {status} after {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `GET /system/info`, as `key value` lines (nested objects flattened with dots).
pub async fn info(client: &Client, json: bool) -> anyhow::Result<()> {
    let info = client.get_json("/system/info").await?;
    if json {
        return print_json(&info);
    }
    fn lines(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    lines(&key, value, out);
                }
            }
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    lines("", &info, &mut out);
    let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in out {
        println!("{key:<width$}  {value}");
    }
    Ok(())
}

/// Shell `export` lines for S3 clients, from `GET /system/config`'s `minio_provider`.
pub async fn env(client: &Client) -> anyhow::Result<()> {
    let config = client.get_json("/system/config").await?;
    let provider = &config["minio_provider"];
    let field = |name: &str| {
        provider[name].as_str().map(str::to_owned).ok_or_else(|| {
            fail(
                exit::UNAVAILABLE,
                format!("the server's configuration has no S3 {name}"),
            )
        })
    };
    let (endpoint, access_key, secret_key) = (field("endpoint")?, field("access_key")?, field("secret_key")?);
    let region = provider["region"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1");
    let vars = [
        ("AWS_ACCESS_KEY_ID", access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_DEFAULT_REGION", region),
        ("RCLONE_CONFIG_CLOISTER_TYPE", "s3"),
        ("RCLONE_CONFIG_CLOISTER_PROVIDER", "Other"),
        ("RCLONE_CONFIG_CLOISTER_ENDPOINT", endpoint.as_str()),
        ("RCLONE_CONFIG_CLOISTER_REGION", region),
        ("RCLONE_CONFIG_CLOISTER_ACCESS_KEY_ID", access_key.as_str()),
        ("RCLONE_CONFIG_CLOISTER_SECRET_ACCESS_KEY", secret_key.as_str()),
    ];
    let mut out = String::new();
    for (name, value) in vars {
        // Single quotes keep every byte literal; a quote inside is closed, escaped, reopened.
        out.push_str(&format!("export {name}='{}'\n", value.replace('\'', r"'\''")));
    }
    if endpoint.starts_with("http://") {
        // A CA bundle means nothing to a plain-HTTP endpoint, but rclone's AWS SDK refuses to
        // start with one set (LoadCustomCABundleError).
        out.push_str("unset AWS_CA_BUNDLE\n");
    }
    print!("{out}");
    Ok(())
}

pub async fn job_logs(client: &Client, service: &str, job: &str, timestamps: bool) -> anyhow::Result<()> {
    let response = client
        .system(
            Method::GET,
            &format!("/system/logs/{service}/{job}?timestamps={timestamps}"),
            None,
        )
        .await?;
    print!("{}", response.text().await?);
    Ok(())
}

/// Downloads a job's sealed log and prints its lines, decrypted with the identity in
/// `identity_file` (the data owner's: this runs on the owner's computer).
pub async fn job_sealed_logs(
    client: &Client,
    service: &str,
    job: &str,
    timestamps: bool,
    identity_file: &Path,
    json: bool,
) -> anyhow::Result<()> {
    // Loaded first: a missing or malformed identity fails before anything is downloaded.
    let identity = cloister_crypt::Identity::load(identity_file)
        .map_err(|e| fail(exit::INVALID, format!("{}: {e}", identity_file.display())))?;
    let sealed = client
        .system(Method::GET, &format!("/system/logs/{service}/{job}/sealed"), None)
        .await?
        .bytes()
        .await
        .map_err(|e| fail(exit::UNAVAILABLE, format!("cannot read the sealed log: {e}")))?;
    let (bucket, key) = cloister_runtime::tee::sealed_log_binding(service, job);
    let binding = cloister_crypt::ObjectBinding::new(bucket, key);
    let plain = cloister_crypt::decrypt_to_vec(&sealed, &identity, &binding).map_err(|e| {
        fail(
            exit::INVALID,
            format!("the sealed log of {service}/{job} does not open with this identity: {e}"),
        )
    })?;
    let text = String::from_utf8_lossy(&plain);
    let lines: Vec<&str> = text
        .lines()
        .map(|line| if timestamps { line } else { without_timestamp(line) })
        .collect();
    if json {
        print_json(&json!(lines))
    } else {
        let mut out = String::with_capacity(text.len());
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        print!("{out}");
        Ok(())
    }
}

/// A log line without its leading RFC 3339 time; a line without one is left whole.
fn without_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((time, rest))
            if time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).is_ok() =>
        {
            rest
        }
        _ => line,
    }
}

pub async fn job_rm(client: &Client, service: &str, job: Option<&str>, all: bool) -> anyhow::Result<()> {
    let path = match job {
        Some(job) => format!("/system/logs/{service}/{job}"),
        None => format!("/system/logs/{service}?all={all}"),
    };
    client.system(Method::DELETE, &path, None).await?;
    Ok(())
}

fn progress(total: u64, json: bool) -> ProgressBar {
    // Small transfers and scripted runs get no bar.
    if json || total < 8 * 1024 * 1024 || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn object_path(key: &str) -> anyhow::Result<object_store::path::Path> {
    object_store::path::Path::parse(key)
        .map_err(|e| fail(exit::INVALID, format!("invalid object key {key:?}: {e}")))
}

/// Parts of this size go up in parallel for large files.
const PART_SIZE: usize = 8 * 1024 * 1024;

pub async fn put(client: &Client, local: &Path, remote: &str, json: bool) -> anyhow::Result<()> {
    let (bucket, key) = object_target(local, remote);
    let size = upload(client, local, bucket, &key, json).await?;
    if json {
        print_json(&json!({"bucket": bucket, "key": key, "size": size}))?;
    } else {
        eprintln!("uploaded {} to {bucket}/{key} ({size} bytes)", local.display());
    }
    Ok(())
}

/// `bucket/key` for uploading `local` to `remote`; a key ending in `/` takes the file's name.
pub fn object_target<'a>(local: &Path, remote: &'a str) -> (&'a str, String) {
    let (bucket, key) = split_object_path(remote);
    let file_name = local.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let key = if key.is_empty() || key.ends_with('/') {
        format!("{key}{file_name}")
    } else {
        key.to_owned()
    };
    (bucket, key)
}

/// Uploads `local` as `bucket/key` (multipart with a progress bar when large); returns its size.
pub async fn upload(
    client: &Client,
    local: &Path,
    bucket: &str,
    key: &str,
    quiet: bool,
) -> anyhow::Result<u64> {
    let store = client.s3(bucket).await?;
    let path = object_path(key)?;
    let mut file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let size = file.metadata().await?.len();
    let bar = progress(size, quiet);
    if size <= PART_SIZE as u64 {
        let content = tokio::fs::read(local).await?;
        store
            .put(&path, PutPayload::from(content))
            .await
            .map_err(s3_error)?;
    } else {
        use tokio::io::AsyncReadExt;
        let upload = store.put_multipart(&path).await.map_err(s3_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(s3_error)?;
            writer.write(&buf[..n]);
            bar.inc(n as u64);
        }
        writer.finish().await.map_err(s3_error)?;
    }
    bar.finish_and_clear();
    Ok(size)
}

fn s3_error(e: object_store::Error) -> anyhow::Error {
    match e {
        object_store::Error::NotFound { .. } => fail(exit::NOT_FOUND, "no such object or bucket"),
        object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
            fail(exit::UNAUTHORIZED, "the S3 endpoint refused the credentials")
        }
        // object_store reports some refusals (a listing of a missing bucket) only as text with
        // the server's error document in it: its code says what happened, its XML is noise.
        other => {
            let text = other.to_string();
            let tag = |name: &str| {
                let open = format!("<{name}>");
                let start = text.find(&open)? + open.len();
                let len = text[start..].find(&format!("</{name}>"))?;
                Some(text[start..start + len].to_owned())
            };
            match tag("Code").as_deref() {
                Some("NoSuchBucket" | "NoSuchKey" | "NoSuchUpload") => {
                    fail(exit::NOT_FOUND, "no such object or bucket")
                }
                Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                    fail(exit::UNAUTHORIZED, "the S3 endpoint refused the credentials")
                }
                Some(code) => {
                    let message = tag("Message").unwrap_or_default().replace("&quot;", "\"");
                    let server_failed = code == "InternalError" || code == "ServiceUnavailable";
                    let exit = if server_failed {
                        exit::UNAVAILABLE
                    } else {
                        exit::INVALID
                    };
                    fail(
                        exit,
                        format!("the S3 endpoint refused the request: {code}: {message}"),
                    )
                }
                None => fail(exit::UNAVAILABLE, format!("S3 request failed: {text}")),
            }
        }
    }
}

pub async fn get(client: &Client, remote: &str, local: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let (bucket, key) = split_object_path(remote);
    let Some((size, dest)) = download(client, remote, local, json).await? else {
        return Ok(());
    };
    if json {
        print_json(&json!({"bucket": bucket, "key": key, "size": size, "file": dest}))?;
    } else {
        eprintln!("downloaded {bucket}/{key} to {} ({size} bytes)", dest.display());
    }
    Ok(())
}

/// Downloads `bucket/key` to `local` (the key's file name when absent; `-` streams to stdout
/// and answers `None`), through a temporary file renamed into place. Returns size and path.
pub async fn download(
    client: &Client,
    remote: &str,
    local: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<Option<(u64, std::path::PathBuf)>> {
    let (bucket, key) = split_object_path(remote);
    if key.is_empty() {
        return Err(fail(exit::INVALID, "give bucket/key"));
    }
    let store = client.s3(bucket).await?;
    let result = store.get(&object_path(key)?).await.map_err(s3_error)?;
    let size = result.meta.size;
    let default_name = key.rsplit('/').next().unwrap_or(key);
    let to_stdout = local.is_some_and(|p| p == Path::new("-"));
    let bar = progress(size, quiet || to_stdout);
    let mut stream = result.into_stream();
    if to_stdout {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(s3_error)?).await?;
        }
        out.flush().await?;
        return Ok(None);
    }
    let dest = local.map_or_else(|| Path::new(default_name).to_path_buf(), Path::to_path_buf);
    // Written beside the destination and renamed, so a failed download leaves no partial file.
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(tmp.reopen()?);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(s3_error)?;
        out.write_all(&chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    out.flush().await?;
    out.sync_all().await?;
    tmp.persist(&dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    bar.finish_and_clear();
    Ok(Some((size, dest)))
}

pub async fn ls(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    let (bucket, prefix) = split_object_path(path);
    let store = client.s3(bucket).await?;
    let prefix = (!prefix.is_empty())
        .then(|| object_path(prefix.trim_end_matches('/')))
        .transpose()?;
    let mut listing = store.list(prefix.as_ref());
    let mut rows = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(s3_error)?;
        rows.push(json!({
            "key": meta.location.to_string(),
            "size": meta.size,
            "last_modified": meta.last_modified.to_rfc3339(),
        }));
    }
    if json {
        return print_json(&Value::Array(rows));
    }
    for row in rows {
        println!(
            "{:>12}  {}  {}",
            row["size"].as_u64().unwrap_or(0),
            row["last_modified"].as_str().unwrap_or(""),
            row["key"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
