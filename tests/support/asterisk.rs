//! The stand-in for Asterisk, set up as the tests need it.

use asterisk_standin::{StandIn, StandInConfig};

/// A stand-in loaded with the captured configuration.
pub async fn captured_standin() -> (StandIn, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["pjsip.conf", "pjsip_gitops.conf"] {
        std::fs::copy(super::fixture("asterisk/config").join(f), dir.path().join(f)).expect("copy config");
    }
    let s = StandIn::start(StandInConfig {
        pjsip_conf: dir.path().join("pjsip.conf"),
        user: "gitops".into(),
        secret: "gitops-secret".into(),
    })
    .await
    .expect("stand-in starts");
    (s, dir)
}
