//! Named PJSIP profiles (`profile: nat | lan | webrtc`): the one table of
//! which endpoint options each profile writes, which ones Asterisk derives
//! from them, and what Asterisk holds for the rest.
//!
//! Resolve (`spec::resolve`), rendering (through the flags it resolves),
//! `plan` (the "profile nat: …" line) and verification after a reload
//! (`plan::EndpointOptions::mismatches`) all read this table, so what a
//! profile means is written down once.
//!
//! - `nat` (the default): `rewrite_contact`, `rtp_symmetric`, `force_rport`
//!   = yes, `direct_media` = no. For phones behind NAT, and safe on a LAN.
//! - `lan`: writes none of those, so Asterisk's own defaults hold
//!   (res_pjsip/pjsip_configuration.c): `rewrite_contact` = no,
//!   `rtp_symmetric` = no, `force_rport` = yes, `direct_media` = yes.
//! - `webrtc`: writes `webrtc = yes`; Asterisk 22 then turns on (in the
//!   endpoint's apply handler) `use_avpf`, `media_encryption = dtls`,
//!   `dtls_verify = fingerprint`, `dtls_setup = actpass`, `ice_support`,
//!   `media_use_received_transport`, `rtcp_mux`, `bundle`, and
//!   `dtls_auto_generate_cert` when no certificate is configured. Encrypted
//!   media never flows directly between phones, so `direct_media` is left
//!   alone. The transport must be a WebSocket one the operator defines and
//!   names: `transport` on the entry itself (or in `defaults` next to
//!   `profile: webrtc`), never a default meant for the file's other phones.
//!
//! Explicit fields (`rewriteContact`, `rtpSymmetric`, `forceRport`,
//! `directMedia`) override any profile's value and are always written.

use super::Extension;

/// A named set of endpoint options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// Phones behind NAT (the default).
    #[default]
    Nat,
    /// Asterisk's own defaults: phones on the PBX's network.
    Lan,
    /// Browsers (SIP over WebSocket, DTLS-SRTP, ICE).
    Webrtc,
}

/// One endpoint option a profile concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PjsipOption {
    /// The pjsip.conf option name.
    pub name: &'static str,
    /// The key of `PJSIPShowEndpoint`'s `EndpointDetail` event that reports it.
    pub ami: &'static str,
    /// What Asterisk 22 holds when nothing sets it (`pjsip_configuration.c`), normalised (see [`normalise`]).
    pub asterisk_default: &'static str,
}

/// Every option some profile sets or implies, with Asterisk's default.
pub const OPTIONS: &[PjsipOption] = &[
    PjsipOption { name: "rewrite_contact", ami: "RewriteContact", asterisk_default: "no" },
    PjsipOption { name: "rtp_symmetric", ami: "RtpSymmetric", asterisk_default: "no" },
    PjsipOption { name: "force_rport", ami: "ForceRport", asterisk_default: "yes" },
    PjsipOption { name: "direct_media", ami: "DirectMedia", asterisk_default: "yes" },
    PjsipOption { name: "webrtc", ami: "Webrtc", asterisk_default: "no" },
    PjsipOption { name: "use_avpf", ami: "UseAvpf", asterisk_default: "no" },
    PjsipOption { name: "media_encryption", ami: "MediaEncryption", asterisk_default: "no" },
    PjsipOption { name: "dtls_verify", ami: "DtlsVerify", asterisk_default: "no" },
    PjsipOption { name: "dtls_setup", ami: "DtlsSetup", asterisk_default: "active" },
    PjsipOption { name: "dtls_auto_generate_cert", ami: "DtlsAutoGenerateCert", asterisk_default: "no" },
    PjsipOption { name: "ice_support", ami: "IceSupport", asterisk_default: "no" },
    PjsipOption { name: "media_use_received_transport", ami: "MediaUseReceivedTransport", asterisk_default: "no" },
    PjsipOption { name: "rtcp_mux", ami: "RtcpMux", asterisk_default: "no" },
    PjsipOption { name: "bundle", ami: "Bundle", asterisk_default: "no" },
];

/// The spec fields that override a profile's option, by pjsip option name.
pub const OVERRIDES: &[(&str, &str)] = &[
    ("rewriteContact", "rewrite_contact"),
    ("rtpSymmetric", "rtp_symmetric"),
    ("forceRport", "force_rport"),
    ("directMedia", "direct_media"),
];

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Nat, Profile::Lan, Profile::Webrtc];

    /// The name written in a spec (`nat`, `lan`, `webrtc`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Nat => "nat",
            Profile::Lan => "lan",
            Profile::Webrtc => "webrtc",
        }
    }

    /// The profile a spec names, exactly (lower case).
    pub fn parse(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The allowed names, for messages: `nat, lan, webrtc`.
    pub fn names() -> String {
        Profile::ALL.map(Profile::name).join(", ")
    }

    /// The options the profile writes into the endpoint section.
    pub fn sets(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Profile::Nat => {
                &[("rewrite_contact", "yes"), ("rtp_symmetric", "yes"), ("force_rport", "yes"), ("direct_media", "no")]
            }
            Profile::Lan => &[],
            Profile::Webrtc => &[("webrtc", "yes")],
        }
    }

    /// What Asterisk derives from what the profile writes (not written,
    /// but verified): `webrtc = yes`'s implications.
    pub fn implies(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Profile::Nat | Profile::Lan => &[],
            Profile::Webrtc => &[
                ("use_avpf", "yes"),
                ("media_encryption", "dtls"),
                ("dtls_verify", "fingerprint"),
                ("dtls_setup", "actpass"),
                ("dtls_auto_generate_cert", "yes"),
                ("ice_support", "yes"),
                ("media_use_received_transport", "yes"),
                ("rtcp_mux", "yes"),
                ("bundle", "yes"),
            ],
        }
    }

    /// One line for `plan` and the docs: what the profile writes and what
    /// Asterisk then holds, e.g. `profile nat: rewrite_contact=yes, …`.
    pub fn expansion(self) -> String {
        let list = |opts: &[(&str, &str)]| opts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        match self {
            Profile::Lan => {
                let defaults: Vec<(&str, &str)> = OVERRIDES
                    .iter()
                    .filter_map(|(_, o)| option(o).map(|opt| (opt.name, opt.asterisk_default)))
                    .collect();
                format!("profile lan: writes nothing, Asterisk's defaults hold ({})", list(&defaults))
            }
            p if p.implies().is_empty() => format!("profile {}: {}", p.name(), list(p.sets())),
            p => format!("profile {}: {} (Asterisk then sets {})", p.name(), list(p.sets()), list(p.implies())),
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The option of that pjsip name.
pub fn option(name: &str) -> Option<&'static PjsipOption> {
    OPTIONS.iter().find(|o| o.name == name)
}

/// A value as Asterisk reports it, in the table's terms: booleans as
/// yes/no (AMI says `true`, `yes`, `Yes`), everything lower case.
pub fn normalise(value: &str) -> String {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => "yes".into(),
        "false" | "no" | "off" | "0" => "no".into(),
        other => other.to_string(),
    }
}

/// Where the value an extension gets for an option comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A spec field set it (written).
    Explicit,
    /// The profile writes it.
    Profile,
    /// Asterisk derives it from what the profile writes.
    Implied,
    /// Nothing sets it: Asterisk's default.
    AsteriskDefault,
}

/// The flag an extension's resolved fields hold for an overridable option.
fn explicit(ext: &Extension, name: &str) -> Option<bool> {
    match name {
        "rewrite_contact" => ext.rewrite_contact,
        "rtp_symmetric" => ext.rtp_symmetric,
        "force_rport" => ext.force_rport,
        "direct_media" => ext.direct_media,
        _ => None,
    }
}

/// The value an extension's endpoint should hold for every option in
/// [`OPTIONS`], and where it comes from. The resolved flags
/// (`Extension::rewrite_contact`, …) are what the file writes: the
/// profile's values merged with explicit fields by [`resolve_flags`].
pub fn expected(ext: &Extension) -> Vec<(&'static PjsipOption, String, Source)> {
    OPTIONS
        .iter()
        .map(|opt| {
            let profile_sets = ext.profile.sets().iter().find(|(k, _)| *k == opt.name);
            if let Some(b) = explicit(ext, opt.name) {
                let source = match profile_sets {
                    Some((_, v)) if *v == yes_no(b) => Source::Profile,
                    _ => Source::Explicit,
                };
                return (opt, yes_no(b).to_string(), source);
            }
            if let Some((_, v)) = profile_sets {
                return (opt, v.to_string(), Source::Profile);
            }
            if let Some((_, v)) = ext.profile.implies().iter().find(|(k, _)| *k == opt.name) {
                return (opt, v.to_string(), Source::Implied);
            }
            // An option the profile leaves alone may be set in `options`.
            if let Some(v) = ext.options.endpoint.get(opt.name) {
                return (opt, normalise(v), Source::Explicit);
            }
            (opt, opt.asterisk_default.to_string(), Source::AsteriskDefault)
        })
        .collect()
}

/// The four NAT flags a file writes for `profile` with the explicit fields
/// given (`None`: not written, Asterisk's default holds). In the order
/// rewrite_contact, rtp_symmetric, force_rport, direct_media.
pub fn resolve_flags(profile: Profile, explicit: [Option<bool>; 4]) -> [Option<bool>; 4] {
    let mut out = [None; 4];
    for (i, (_, name)) in OVERRIDES.iter().enumerate() {
        out[i] = explicit[i].or_else(|| profile.sets().iter().find(|(k, _)| k == name).map(|(_, v)| *v == "yes"));
    }
    out
}

/// The effective value (written or Asterisk's default) of a NAT flag.
pub fn effective_flag(ext: &Extension, name: &str) -> Option<bool> {
    explicit(ext, name).or_else(|| option(name).map(|o| o.asterisk_default == "yes"))
}

/// What an extension's profile expands to, with the explicit fields that
/// override it: the line `plan` prints under a create or an update. Small
/// and `Copy`: a plan of 100k creates holds one per listed change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expansion {
    pub profile: Profile,
    /// The NAT flags the file writes, in [`OVERRIDES`] order.
    pub written: [Option<bool>; 4],
}

impl Expansion {
    pub fn of(ext: &Extension) -> Self {
        Expansion {
            profile: ext.profile,
            written: [ext.rewrite_contact, ext.rtp_symmetric, ext.force_rport, ext.direct_media],
        }
    }
}

impl std::fmt::Display for Expansion {
    /// `profile nat: rewrite_contact=yes, …` and, when fields override it,
    /// `; overridden by the spec: direct_media=yes`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.profile.expansion())?;
        let profile_says = resolve_flags(self.profile, [None; 4]);
        let overridden: Vec<String> = OVERRIDES
            .iter()
            .zip(self.written.iter().zip(profile_says))
            .filter(|(_, (w, p))| w.is_some() && **w != *p)
            .filter_map(|((_, name), (w, _))| w.map(|b| format!("{name}={}", yes_no(b))))
            .collect();
        if !overridden.is_empty() {
            write!(f, "; overridden by the spec: {}", overridden.join(", "))?;
        }
        Ok(())
    }
}

impl serde::Serialize for Expansion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::diag::Diagnostic;

    fn load(yaml: &str) -> (Vec<Extension>, Vec<Diagnostic>) {
        crate::core::spec::load::load_for_test("p.yaml", yaml)
    }

    const MD5: &str = "md5Cred: 0123456789abcdef0123456789abcdef";

    #[test]
    fn the_profile_comes_from_the_entry_then_the_defaults_then_nat() {
        let (exts, diags) = load(&format!(
            "defaults: {{context: c, transport: t, codecs: [ulaw], profile: lan}}\nextensions:\n  - {{extension: \"1\", {MD5}}}\n  - {{extension: \"2\", {MD5}, profile: nat}}\n"
        ));
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(exts.iter().map(|e| e.profile).collect::<Vec<_>>(), [Profile::Lan, Profile::Nat]);
        let (exts, _) =
            load(&format!("extensions:\n  - {{extension: \"1\", context: c, transport: t, codecs: ulaw, {MD5}}}\n"));
        assert_eq!(exts[0].profile, Profile::Nat);
        assert_eq!(
            (exts[0].rewrite_contact, exts[0].rtp_symmetric, exts[0].force_rport, exts[0].direct_media),
            (Some(true), Some(true), Some(true), Some(false)),
            "nat writes what the daemon always wrote"
        );
    }

    #[test]
    fn explicit_fields_override_the_profile_from_the_entry_or_the_defaults() {
        let (exts, diags) = load(&format!(
            "defaults: {{context: c, transport: t, codecs: [ulaw], directMedia: true}}\nextensions:\n  - {{extension: \"1\", {MD5}, rewriteContact: false}}\n  - {{extension: \"2\", {MD5}, profile: lan, rtpSymmetric: true}}\n"
        ));
        assert!(diags.is_empty(), "{diags:?}");
        let flags = |e: &Extension| (e.rewrite_contact, e.rtp_symmetric, e.force_rport, e.direct_media);
        assert_eq!(flags(&exts[0]), (Some(false), Some(true), Some(true), Some(true)));
        assert_eq!(flags(&exts[1]), (None, Some(true), None, Some(true)), "lan: only what the spec says is written");
        let want: Vec<(&str, String, Source)> =
            expected(&exts[1]).into_iter().take(4).map(|(o, v, s)| (o.name, v, s)).collect();
        assert_eq!(
            want,
            [
                ("rewrite_contact", "no".to_string(), Source::AsteriskDefault),
                ("rtp_symmetric", "yes".to_string(), Source::Explicit),
                ("force_rport", "yes".to_string(), Source::AsteriskDefault),
                ("direct_media", "yes".to_string(), Source::Explicit),
            ]
        );
    }

    #[test]
    fn an_unknown_profile_is_an_error_at_its_field_listing_the_allowed_ones() {
        let (exts, diags) = load(&format!(
            "extensions:\n  - extension: \"1\"\n    context: c\n    transport: t\n    codecs: ulaw\n    {MD5}\n    profile: Nat\n"
        ));
        assert!(exts.is_empty());
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(
            (d.code, d.field.as_str(), d.location.line, d.location.column),
            ("unknown-profile", "extensions[0].profile", 7, 14)
        );
        assert!(d.message.contains("\"Nat\" is not one of nat, lan, webrtc"), "{}", d.message);
        let (_, diags) = load(&format!(
            "extensions:\n  - {{extension: \"1\", context: c, transport: t, codecs: ulaw, {MD5}, profile: \"a]b\"}}\n"
        ));
        assert_eq!(diags[0].code, "unsafe-value", "{diags:?}");
        assert!(!diags[0].message.contains("a]b"), "{}", diags[0].message);
        let (_, diags) = load(&format!(
            "extensions:\n  - {{extension: \"1\", context: c, transport: t, codecs: ulaw, {MD5}, profile: 3}}\n"
        ));
        assert_eq!((diags[0].code, diags[0].field.as_str()), ("wrong-type", "extensions[0].profile"), "{diags:?}");
    }

    #[test]
    fn webrtc_takes_only_a_transport_chosen_for_it() {
        let head = "defaults: {context: c, transport: transport-udp, codecs: [opus]";
        // On the entry: fine.
        let (exts, diags) = load(&format!(
            "{head}}}\nextensions:\n  - {{extension: \"1\", {MD5}, profile: webrtc, transport: transport-wss}}\n"
        ));
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!((exts[0].profile, exts[0].transport.as_str()), (Profile::Webrtc, "transport-wss"));
        assert_eq!(
            (exts[0].rewrite_contact, exts[0].rtp_symmetric, exts[0].force_rport, exts[0].direct_media),
            (None, None, None, None),
            "webrtc writes no NAT flag"
        );
        // In defaults next to profile: webrtc: fine, also for an entry that says webrtc again.
        let (exts, diags) = load(&format!(
            "{head}, profile: webrtc}}\nextensions:\n  - {{extension: \"1\", {MD5}}}\n  - {{extension: \"2\", {MD5}, profile: webrtc}}\n"
        ));
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(exts.iter().map(|e| e.profile).collect::<Vec<_>>(), [Profile::Webrtc, Profile::Webrtc]);
        // On the entry, inheriting the file's transport: refused at the profile.
        let (exts, diags) =
            load(&format!("{head}}}\nextensions:\n  - extension: \"1\"\n    {MD5}\n    profile: webrtc\n"));
        assert!(exts.is_empty());
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(
            (diags[0].code, diags[0].field.as_str(), diags[0].location.line),
            ("webrtc-transport", "extensions[0].profile", 5)
        );
        assert!(diags[0].message.contains("\"transport-udp\""), "{}", diags[0].message);
    }

    #[test]
    fn every_option_a_profile_names_is_in_the_table() {
        for p in Profile::ALL {
            for (name, _) in p.sets().iter().chain(p.implies()) {
                assert!(option(name).is_some(), "{p}: {name} is not in OPTIONS");
            }
        }
        for (_, name) in OVERRIDES {
            assert!(option(name).is_some(), "{name}");
        }
    }

    #[test]
    fn names_parse_back_and_nothing_else_does() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.name()), Some(p));
        }
        assert_eq!(Profile::parse("NAT"), None);
        assert_eq!(Profile::parse("wan"), None);
        assert_eq!(Profile::names(), "nat, lan, webrtc");
    }

    #[test]
    fn flags_are_the_profiles_values_with_explicit_fields_on_top() {
        assert_eq!(resolve_flags(Profile::Nat, [None; 4]), [Some(true), Some(true), Some(true), Some(false)]);
        assert_eq!(resolve_flags(Profile::Lan, [None; 4]), [None; 4]);
        assert_eq!(resolve_flags(Profile::Webrtc, [None; 4]), [None; 4]);
        assert_eq!(
            resolve_flags(Profile::Nat, [Some(false), None, None, Some(true)]),
            [Some(false), Some(true), Some(true), Some(true)]
        );
        assert_eq!(resolve_flags(Profile::Lan, [None, Some(true), None, None]), [None, Some(true), None, None]);
    }

    #[test]
    fn expansions_say_what_each_profile_writes() {
        assert_eq!(
            Profile::Nat.expansion(),
            "profile nat: rewrite_contact=yes, rtp_symmetric=yes, force_rport=yes, direct_media=no"
        );
        assert_eq!(
            Profile::Lan.expansion(),
            "profile lan: writes nothing, Asterisk's defaults hold (rewrite_contact=no, rtp_symmetric=no, force_rport=yes, direct_media=yes)"
        );
        let w = Profile::Webrtc.expansion();
        assert!(
            w.starts_with("profile webrtc: webrtc=yes (Asterisk then sets use_avpf=yes, media_encryption=dtls"),
            "{w}"
        );
    }

    #[test]
    fn asterisk_reports_normalise_to_the_tables_terms() {
        assert_eq!(normalise("true"), "yes");
        assert_eq!(normalise("Yes"), "yes");
        assert_eq!(normalise("No"), "no");
        assert_eq!(normalise("Fingerprint"), "fingerprint");
        assert_eq!(normalise("dtls"), "dtls");
    }
}
