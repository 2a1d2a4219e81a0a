//! The REST and S3 client behind the client commands, and the exit codes they end with.

use std::path::{Path, PathBuf};

use anyhow::Context;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Exit codes: what a script can branch on.
pub mod exit {
    /// Any failure not listed below.
    pub const FAILURE: i32 = 1;
    /// The command line is incomplete or contradictory.
    pub const USAGE: i32 = 2;
    /// The server said the thing does not exist (404).
    pub const NOT_FOUND: i32 = 3;
    /// Missing or wrong credentials (401/403).
    pub const UNAUTHORIZED: i32 = 4;
    /// The thing already exists or is in use (409).
    pub const CONFLICT: i32 = 5;
    /// The server refused the input (400/413).
    pub const INVALID: i32 = 6;
    /// The server failed or could not be reached (5xx, connection errors).
    pub const UNAVAILABLE: i32 = 7;
    /// A job or invocation ran and failed.
    pub const JOB_FAILED: i32 = 8;
}

/// An error carrying the exit code the process should end with.
#[derive(Debug)]
pub struct Exit {
    /// The process's exit code (see [`exit`]).
    pub code: i32,
    /// What went wrong, for the user.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// An error that ends the process with `code`.
pub fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

/// Endpoint and credentials, as the server writes them to `<data-dir>/client.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// REST API base URL.
    pub endpoint: String,
    /// Admin user.
    pub user: String,
    /// Admin password.
    pub password: String,
    /// The S3 endpoint, when written by the server (clients ask `/system/config` anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
}

/// Where the client configuration comes from, in order: flags/environment, then the file named
/// by `--config`/`CLOISTER_CONFIG`, then `~/.config/cloister/config.json`, then
/// `./cloister-data/client.json` (the server's default data directory).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Client configuration file (JSON: endpoint, user, password).
    #[arg(long, global = true, env = "CLOISTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// REST API endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "CLOISTER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Admin user.
    #[arg(long, global = true, env = "CLOISTER_USER")]
    pub user: Option<String>,
    /// Admin password.
    #[arg(long, global = true, env = "CLOISTER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl ConnectArgs {
    /// The configuration to connect with, from the sources in their order.
    pub fn resolve(&self) -> anyhow::Result<ClientConfig> {
        let file = match &self.config {
            Some(path) => Some(read_config(path)?),
            None => {
                let candidates = [
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/cloister/config.json")),
                    Some(PathBuf::from("cloister-data/client.json")),
                ];
                candidates
                    .into_iter()
                    .flatten()
                    .find(|p| p.exists())
                    .map(|p| read_config(&p))
                    .transpose()?
            }
        };
        let pick = |flag: &Option<String>, from_file: Option<&String>, what: &str| {
            flag.clone().or_else(|| from_file.cloned()).ok_or_else(|| {
                fail(
                    exit::FAILURE,
                    format!(
                        "no {what} configured: pass --{what} (or CLOISTER_{}), or --config FILE",
                        what.to_uppercase()
                    ),
                )
            })
        };
        Ok(ClientConfig {
            endpoint: pick(&self.endpoint, file.as_ref().map(|f| &f.endpoint), "endpoint")?,
            user: pick(&self.user, file.as_ref().map(|f| &f.user), "user")?,
            password: pick(&self.password, file.as_ref().map(|f| &f.password), "password")?,
            s3_endpoint: None,
        })
    }
}

fn read_config(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a client configuration", path.display()))
}

/// A connection to a Cloister (or OSCAR) server.
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
}

impl Client {
    /// A client for the server `config` names (nothing is sent yet).
    pub fn new(config: ClientConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("cannot create the HTTP client")?;
        Ok(Self { http, config })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.endpoint.trim_end_matches('/'))
    }

    /// Sends a request with Basic auth; non-2xx answers become [`Exit`] errors.
    pub async fn system(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .basic_auth(&self.config.user, Some(&self.config.password));
        if let Some(body) = body {
            request = request.json(body);
        }
        check(request.send().await).await
    }

    /// Sends an invocation with the service's Bearer token.
    pub async fn invoke(&self, path: &str, token: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let request = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        check(request.send().await).await
    }

    /// GET returning JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.system(Method::GET, path, None).await?;
        response.json().await.context("the server's answer is not JSON")
    }

    /// Whether a service exists (OSCAR clients decide create-vs-update this way).
    pub async fn service_exists(&self, name: &str) -> anyhow::Result<bool> {
        match self
            .system(Method::GET, &format!("/system/services/{name}"), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.downcast_ref::<Exit>()
                    .is_some_and(|x| x.code == exit::NOT_FOUND) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// An S3 client for one bucket, with the endpoint and keys from `/system/config`.
    pub async fn s3(&self, bucket: &str) -> anyhow::Result<AmazonS3> {
        self.s3_builder(bucket)
            .await?
            .build()
            .context("cannot configure the S3 client")
    }

    /// The configuration of [`Client::s3`], for a caller that changes more of it.
    pub async fn s3_builder(&self, bucket: &str) -> anyhow::Result<AmazonS3Builder> {
        let config = self.get_json("/system/config/").await?;
        let provider = &config["minio_provider"];
        let field = |name: &str| {
            provider[name].as_str().map(str::to_owned).ok_or_else(|| {
                fail(
                    exit::FAILURE,
                    format!("/system/config has no minio_provider.{name}"),
                )
            })
        };
        let region = provider["region"]
            .as_str()
            .filter(|r| !r.is_empty())
            .unwrap_or("us-east-1");
        Ok(AmazonS3Builder::new()
            .with_endpoint(field("endpoint")?)
            .with_access_key_id(field("access_key")?)
            .with_secret_access_key(field("secret_key")?)
            .with_region(region)
            .with_bucket_name(bucket)
            .with_allow_http(true))
    }
}

async fn check(sent: reqwest::Result<reqwest::Response>) -> anyhow::Result<reqwest::Response> {
    let response = sent.map_err(|e| fail(exit::UNAVAILABLE, format!("cannot reach the server: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = format!("{status}: {}", body.trim());
    let code = match status {
        StatusCode::NOT_FOUND => exit::NOT_FOUND,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::UNAUTHORIZED,
        StatusCode::CONFLICT => exit::CONFLICT,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => exit::INVALID,
        s if s.is_server_error() => exit::UNAVAILABLE,
        _ => exit::FAILURE,
    };
    Err(fail(code, message))
}

/// Splits `bucket/key/...` (or `bucket` alone) into its parts.
pub fn split_object_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}
