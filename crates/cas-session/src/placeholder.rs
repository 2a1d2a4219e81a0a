//! `$$CLOISTER::name$$` and `$$CLOISTER::name:format$$` placeholders.
//!
//! A placeholder starts at `$$CLOISTER::` and ends at the next `$$`. Text that does not start
//! with `$$CLOISTER::` is copied unchanged, including other `$$`. Substitution is a single
//! pass: a substituted value is never scanned again, so a secret that happens to contain a
//! placeholder cannot pull in another secret.

use std::fmt;
use std::str::FromStr;

use crate::model::SecretKind;

pub(crate) const OPEN: &str = "$$CLOISTER::";
const CLOSE: &str = "$$";

/// How a secret is written where a placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// No format given: the kind's natural text form.
    Default,
    Hex,
    Base64,
    Crt,
    Chain,
    PrivateKey,
    PublicKey,
}

impl Format {
    pub(crate) fn parse(format: Option<&str>) -> Result<Self, String> {
        match format {
            None => Ok(Format::Default),
            Some(f) => Format::from_str(f),
        }
    }

    /// Whether this format can be applied to a secret of `kind`.
    pub(crate) fn valid_for(self, kind: SecretKind) -> bool {
        match self {
            Format::Default | Format::Hex | Format::Base64 => true,
            Format::PrivateKey | Format::PublicKey => kind.is_key(),
            Format::Crt | Format::Chain => kind.is_cert(),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Format::Default => "(default)",
            Format::Hex => "hex",
            Format::Base64 => "base64",
            Format::Crt => "crt",
            Format::Chain => "chain",
            Format::PrivateKey => "privatekey",
            Format::PublicKey => "publickey",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hex" => Ok(Format::Hex),
            "base64" => Ok(Format::Base64),
            "crt" => Ok(Format::Crt),
            "chain" => Ok(Format::Chain),
            "privatekey" => Ok(Format::PrivateKey),
            "publickey" => Ok(Format::PublicKey),
            other => Err(format!(
                "unknown format '{other}' (expected hex, base64, crt, chain, privatekey or publickey)"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Placeholder { name: &'a str, format: Format },
}

/// Splits `template` into literal text and placeholders; fails on an unterminated or
/// malformed placeholder.
pub(crate) fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        let (text, tail) = rest.split_at(start);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let body_and_more = tail.get(OPEN.len()..).unwrap_or("");
        let end = body_and_more
            .find(CLOSE)
            .ok_or_else(|| format!("unterminated placeholder (missing closing {CLOSE})"))?;
        let (body, after) = body_and_more.split_at(end);
        let (name, format) = match body.split_once(':') {
            Some((name, format)) => (name, Some(format)),
            None => (body, None),
        };
        if !crate::validate::is_secret_name(name) {
            return Err(format!("invalid secret name '{name}' in placeholder"));
        }
        let format = Format::parse(format)?;
        pieces.push(Piece::Placeholder { name, format });
        rest = after.get(CLOSE.len()..).unwrap_or("");
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_placeholders() {
        let p = parse("a $$CLOISTER::k$$ b $$CLOISTER::c:hex$$$$x").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("a "),
                Piece::Placeholder {
                    name: "k",
                    format: Format::Default
                },
                Piece::Text(" b "),
                Piece::Placeholder {
                    name: "c",
                    format: Format::Hex
                },
                Piece::Text("$$x"),
            ]
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse("$$CLOISTER::k").is_err());
        assert!(parse("$$CLOISTER::k:pem$$").is_err());
        assert!(parse("$$CLOISTER::$$").is_err());
        assert!(parse("$$CLOISTER::a b$$").is_err());
        assert_eq!(parse("$$ plain $$").unwrap(), vec![Piece::Text("$$ plain $$")]);
    }
}
