//! The configuration one service receives: placeholders replaced by secrets.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SessionError;
use crate::model::Session;
use crate::placeholder::{self, Piece};
use crate::secrets::{Secrets, b64_bytes, format_secret};
use crate::validate::parse_mode;

/// What an attested service receives. It holds secrets: `Debug` shows only its shape.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Command line (empty: the image's default command).
    pub command: Vec<String>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Working directory.
    pub pwd: Option<String>,
    /// Files to create before the program starts.
    pub files: Vec<RenderedFile>,
}

/// One injected file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedFile {
    /// Absolute path.
    pub path: String,
    /// Content (base64 when serialized).
    #[serde(with = "b64_bytes")]
    pub content: Vec<u8>,
    /// Permission bits, such as `0o600`.
    pub mode: u32,
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field(
                "command",
                &format_args!("<{} words redacted>", self.command.len()),
            )
            .field("environment", &self.environment.keys().collect::<Vec<_>>())
            .field("pwd", &self.pwd.as_ref().map(|_| "<redacted>"))
            .field("files", &self.files)
            .finish()
    }
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field(
                "content",
                &format_args!("<{} bytes redacted>", self.content.len()),
            )
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

/// Substitutes every placeholder of `template` in one pass.
fn substitute(template: &str, secrets: &Secrets, field: &str) -> Result<Vec<u8>, SessionError> {
    let pieces = placeholder::parse(template).map_err(|r| SessionError::invalid(field, r))?;
    let mut out = Vec::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
            Piece::Placeholder { name, format } => {
                let secret = secrets.get(name).ok_or_else(|| {
                    SessionError::secret(name, "has no value (materialize the secrets first)")
                })?;
                let bytes = format_secret(secret, format).map_err(|r| SessionError::secret(name, r))?;
                out.extend_from_slice(&bytes);
            }
        }
    }
    Ok(out)
}

fn substitute_text(template: &str, secrets: &Secrets, field: &str) -> Result<String, SessionError> {
    // Every format produces text (ascii values are ASCII by validation); a stored value
    // that is not is reported rather than mangled.
    String::from_utf8(substitute(template, secrets, field)?)
        .map_err(|_| SessionError::invalid(field, "a substituted secret is not text"))
}

/// Renders the configuration of service `service`: command, environment and pwd with
/// placeholders substituted, and the session's files that go to this service (those whose
/// `services` list is empty or names it). Substitution is one pass: substituted values are
/// not scanned for placeholders again.
pub fn render_service(
    session: &Session,
    service: &str,
    secrets: &Secrets,
) -> Result<ServiceConfig, SessionError> {
    let (index, svc) = session
        .services
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == service)
        .ok_or_else(|| SessionError::UnknownService(service.to_string()))?;
    let prefix = format!("services[{index}]");
    let command = svc
        .command
        .iter()
        .enumerate()
        .map(|(j, w)| substitute_text(w, secrets, &format!("{prefix}.command[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let environment = svc
        .environment
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                substitute_text(v, secrets, &format!("{prefix}.environment.{k}"))?,
            ))
        })
        .collect::<Result<BTreeMap<_, _>, SessionError>>()?;
    let pwd = svc
        .pwd
        .as_deref()
        .map(|p| substitute_text(p, secrets, &format!("{prefix}.pwd")))
        .transpose()?;
    let mut files = Vec::new();
    for (i, file) in session.files.iter().enumerate() {
        if !file.services.is_empty() && !file.services.iter().any(|s| s == service) {
            continue;
        }
        let mode = parse_mode(&file.permission)
            .map_err(|r| SessionError::invalid(format!("files[{i}].permission"), r))?;
        files.push(RenderedFile {
            path: file.path.clone(),
            content: substitute(&file.content, secrets, &format!("files[{i}].content"))?,
            mode,
        });
    }
    Ok(ServiceConfig {
        command,
        environment,
        pwd,
        files,
    })
}
