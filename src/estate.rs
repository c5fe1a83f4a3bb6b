//! Generated estates: many realistic spec files, for benchmarks, load
//! tests and demos (`cargo run --example gen_estate`). Not used by the daemon.

use crate::secret::{DEFAULT_REALM, md5_cred};
use std::fmt::Write as _;
use std::path::Path;

/// How many extensions one generated file holds.
pub const PER_FILE: usize = 1000;

/// The files of an estate of `n` extensions, numbered from 100000: (relative path, YAML text).
/// Every tenth extension has a plain-text password, the rest md5Cred; files are
/// grouped by department, with defaults, as an operator would write them.
pub fn generate(n: usize) -> Vec<(String, String)> {
    let departments = ["sales", "support", "billing", "logistics", "management"];
    let mut files = Vec::with_capacity(n.div_ceil(PER_FILE));
    for (file_no, start) in (0..n).step_by(PER_FILE).enumerate() {
        let dept = departments[file_no % departments.len()];
        let mut text = String::with_capacity(PER_FILE * 160);
        text.push_str("# yaml-language-server: $schema=../schema/extensions.schema.json\n");
        let _ = write!(
            text,
            "defaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw, alaw, g729]\n  labels:\n    department: {dept}\nextensions:\n"
        );
        for i in start..(start + PER_FILE).min(n) {
            let number = 100_000 + i;
            let _ = write!(text, "  - extension: \"{number}\"\n    displayName: Agent {number}\n");
            if i % 10 == 9 {
                let _ = writeln!(text, "    password: Pw-{number}-x");
            } else {
                let _ = writeln!(
                    text,
                    "    md5Cred: {}",
                    md5_cred(&number.to_string(), DEFAULT_REALM, &format!("Pw-{number}"))
                );
            }
            if i % 7 == 0 {
                let _ = writeln!(text, "    maxContacts: 2\n    labels:\n      email: agent{number}@example.com");
            }
        }
        files.push((format!("{dept}/{file_no:04}.yaml"), text));
    }
    files
}

/// Writes [`generate`]'s files under `dir`.
pub fn write(dir: &Path, n: usize) -> std::io::Result<()> {
    for (name, text) in generate(n) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// A hand-kept-looking pjsip.conf of `n` phones numbered from 100000, built
/// from templates (`[phone-t](!)`, `[auth-t](!)`, `[aor-t](!)`), with
/// plain-text passwords and every tenth phone speaking French: the input of
/// the adoption test and the import benchmark. Returns it and the numbers.
pub fn pjsip_conf(n: usize) -> (String, Vec<String>) {
    let mut s = String::with_capacity(256 + n * 200);
    s.push_str(
        "; generated: phones from templates\n[phone-t](!)\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw,alaw\n\
         transport = transport-udp\ndirect_media = no\nrtp_symmetric = yes\nforce_rport = yes\nrewrite_contact = yes\ntimers = required\n\n\
         [auth-t](!)\ntype = auth\nauth_type = userpass\n\n[aor-t](!)\ntype = aor\nmax_contacts = 2\nqualify_frequency = 60\nremove_existing = yes\n\n",
    );
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = (100_000 + i).to_string();
        let lang = if i % 10 == 0 { "language = fr\n" } else { "" };
        let _ = write!(
            s,
            "[{id}](phone-t)\nauth = {id}\naors = {id}\ncallerid = \"Agent {i}\" <{id}>\n{lang}\n[{id}](auth-t)\nusername = {id}\npassword = pw-{id}-x\n\n[{id}](aor-t)\n\n"
        );
        ids.push(id);
    }
    (s, ids)
}

/// A FreePBX Bulk Handler extensions export of `n` rows numbered from
/// `first` (more columns than the spec carries; `&` between codecs).
pub fn bulk_handler_csv(first: usize, n: usize) -> String {
    let mut s = String::from(
        "extension,name,description,tech,secret,callwaiting_enable,voicemail,context,transport,allow,disallow,dtmfmode,\
         max_contacts,qualifyfreq,mailbox,rewrite_contact,rtp_symmetric,force_rport,direct_media\n",
    );
    for i in 0..n {
        let ext = first + i;
        let _ = writeln!(
            s,
            "{ext},\"Agent {i}, Sales\",,pjsip,Pw-{ext}-secret,ENABLED,novm,from-internal,transport-udp,ulaw&alaw,all,rfc4733,1,60,{ext}@default,yes,yes,yes,no"
        );
    }
    s
}
