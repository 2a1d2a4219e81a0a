//! Syntax of the session and service names a request may name, checked before anything about
//! the request is recorded. The rules are cas-session's (which keeps its checks private); a
//! test holds the two to the same answers.

const MAX_SESSION_NAME: usize = 128;
const MAX_SERVICE_NAME: usize = 64;

fn is_lower_word(word: &str) -> bool {
    let bytes = word.as_bytes();
    bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// `a/b/c`: segments of `[a-z0-9][a-z0-9-_.]*`, at most 128 characters in all.
pub(crate) fn valid_session_name(name: &str) -> bool {
    name.len() <= MAX_SESSION_NAME && name.split('/').all(is_lower_word)
}

/// `[a-z0-9][a-z0-9-_.]*`, at most 64 characters.
pub(crate) fn valid_service_name(name: &str) -> bool {
    name.len() <= MAX_SERVICE_NAME && is_lower_word(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSIONS: &[&str] = &[
        "a",
        "team/app",
        "a/b/c",
        "0/x.y-z_w",
        "",
        "/a",
        "a/",
        "a//b",
        "A/b",
        "-a",
        "a/.b",
        "a b",
        "a#b",
        "ä",
        "a\nb",
    ];
    const SERVICES: &[&str] = &["svc", "w0", "a.b-c_d", "", "a/b", "Svc", "_x", "a#b", "x y"];

    fn session_yaml(session: &str, service: &str) -> String {
        format!(
            "name: {}\nservices:\n- name: {}\n  command: [run]\n  attestation:\n  - tee: sgx\n    mrenclave: {}\n",
            serde_json::to_string(session).unwrap(),
            serde_json::to_string(service).unwrap(),
            "ab".repeat(32)
        )
    }

    /// The server's early check accepts exactly the names a session may have.
    #[test]
    fn agrees_with_the_session_language() {
        let long_session = format!("{}/{}", "a".repeat(64), "b".repeat(63));
        let too_long_session = format!("{long_session}c");
        let long_service = "s".repeat(64);
        let too_long_service = "s".repeat(65);
        let sessions = SESSIONS
            .iter()
            .copied()
            .chain([long_session.as_str(), too_long_session.as_str()]);
        for session in sessions {
            let parsed = cloister_cas_session::parse_session(&session_yaml(session, "svc")).is_ok();
            assert_eq!(valid_session_name(session), parsed, "session {session:?}");
        }
        let services = SERVICES
            .iter()
            .copied()
            .chain([long_service.as_str(), too_long_service.as_str()]);
        for service in services {
            let parsed = cloister_cas_session::parse_session(&session_yaml("s", service)).is_ok();
            assert_eq!(valid_service_name(service), parsed, "service {service:?}");
        }
        assert!(valid_session_name(&long_session) && !valid_session_name(&too_long_session));
        assert!(valid_service_name(&long_service) && !valid_service_name(&too_long_service));
    }
}
