//! The crate's one error type.

/// Everything that can go wrong with a session, its secrets or its rendering.
///
/// Messages name the offending field or secret but never contain secret values: explicit
/// values that fail to parse are reported as "not shown", and generated values never appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The text is not well-formed YAML (or is too large, or holds several documents).
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    /// A field is missing, unknown or has an invalid value. `field` is its path, such as
    /// `services[0].attestation[1].mrenclave`.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, in the notation `a.b[2].c`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An update names a predecessor that is not the hash of the current session: someone
    /// else updated the session in the meantime.
    #[error("stale predecessor: the update names {given} but the current session is {current}")]
    StalePredecessor {
        /// The predecessor named by the update.
        given: String,
        /// The hash of the current session.
        current: String,
    },
    /// The session has no service of this name.
    #[error("unknown service '{0}'")]
    UnknownService(String),
    /// A secret could not be generated, imported, loaded or formatted.
    #[error("secret '{name}': {reason}")]
    Secret {
        /// Name of the secret.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// An import was refused by the exporting session.
    #[error("import of secret '{secret}' from session '{session}' refused: {reason}")]
    ImportRefused {
        /// The exporting session.
        session: String,
        /// The secret's name in the exporting session.
        secret: String,
        /// Why the import is refused.
        reason: String,
    },
}

impl SessionError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SessionError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn secret(name: impl Into<String>, reason: impl Into<String>) -> Self {
        SessionError::Secret {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
