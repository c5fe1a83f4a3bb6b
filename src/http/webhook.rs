//! Push webhooks from GitHub, GitLab and Gitea: who sent it, whether it is
//! genuine, and which branch it pushed.
//!
//! Architecture invariant: nothing in a webhook body is trusted before its
//! signature (or token) has been checked, in constant time, against the
//! configured secret. An unsigned or wrongly signed request changes nothing.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error(
        "the request carries no signature or token header (X-Hub-Signature-256, X-Gitlab-Token, X-Gitea-Signature)"
    )]
    Unsigned,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the body is not a push event: {0}")]
    NotAPush(String),
}

/// Checks the request's signature against `secret`. `header` looks a header
/// up by name, case-insensitively.
pub fn verify(header: &dyn Fn(&str) -> Option<String>, body: &[u8], secret: &[u8]) -> Result<Forge, WebhookError> {
    if let Some(sig) = header("x-hub-signature-256") {
        let hex_sig = sig.strip_prefix("sha256=").ok_or(WebhookError::BadSignature)?;
        return check_hmac(hex_sig, body, secret).map(|()| Forge::GitHub);
    }
    if let Some(sig) = header("x-gitea-signature") {
        return check_hmac(&sig, body, secret).map(|()| Forge::Gitea);
    }
    if let Some(token) = header("x-gitlab-token") {
        return if bool::from(token.as_bytes().ct_eq(secret)) {
            Ok(Forge::GitLab)
        } else {
            Err(WebhookError::BadSignature)
        };
    }
    Err(WebhookError::Unsigned)
}

fn check_hmac(hex_sig: &str, body: &[u8], secret: &[u8]) -> Result<(), WebhookError> {
    let expected = hex::decode(hex_sig.trim()).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected).map_err(|_| WebhookError::BadSignature)
}

/// The HMAC-SHA256 signature GitHub would send for `body` (`sha256=<hex>`).
pub fn github_signature(body: &[u8], secret: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The branch a verified push event updated (`refs/heads/main` → `main`);
/// `None` for tag pushes. All three forges put it in `ref`.
pub fn pushed_branch(body: &[u8]) -> Result<Option<String>, WebhookError> {
    #[derive(serde::Deserialize)]
    struct Push {
        #[serde(rename = "ref")]
        git_ref: String,
    }
    let push: Push = serde_json::from_slice(body).map_err(|e| WebhookError::NotAPush(e.to_string()))?;
    Ok(push.git_ref.strip_prefix("refs/heads/").map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"ref":"refs/heads/main","after":"abc"}"#;

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        move |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn github_and_gitea_signatures_are_checked() {
        let sig = github_signature(BODY, b"s3cret");
        assert_eq!(verify(&headers(&[("X-Hub-Signature-256", sig.clone())]), BODY, b"s3cret"), Ok(Forge::GitHub));
        assert_eq!(
            verify(&headers(&[("X-Hub-Signature-256", sig.clone())]), BODY, b"other"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(&headers(&[("X-Hub-Signature-256", sig.clone())]), b"{}", b"s3cret"),
            Err(WebhookError::BadSignature)
        );
        let gitea = sig.trim_start_matches("sha256=").to_string();
        assert_eq!(verify(&headers(&[("X-Gitea-Signature", gitea)]), BODY, b"s3cret"), Ok(Forge::Gitea));
        assert_eq!(
            verify(&headers(&[("X-Hub-Signature-256", "sha256=zz".into())]), BODY, b"s3cret"),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn gitlab_tokens_and_unsigned_requests() {
        assert_eq!(verify(&headers(&[("X-Gitlab-Token", "s3cret".into())]), BODY, b"s3cret"), Ok(Forge::GitLab));
        assert_eq!(
            verify(&headers(&[("X-Gitlab-Token", "s3cre".into())]), BODY, b"s3cret"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(verify(&headers(&[]), BODY, b"s3cret"), Err(WebhookError::Unsigned));
    }

    #[test]
    fn the_pushed_branch_is_read_from_ref() {
        assert_eq!(pushed_branch(BODY), Ok(Some("main".into())));
        assert_eq!(pushed_branch(br#"{"ref":"refs/tags/v1"}"#), Ok(None));
        assert!(pushed_branch(b"not json").is_err());
    }
}
