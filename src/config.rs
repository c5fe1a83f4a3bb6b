//! Configuration: one optional file (`--config`, YAML), overridden by
//! environment variables, overridden by command-line flags, over built-in
//! defaults that run on a fresh machine (SQLite and files under ./state, no
//! Asterisk).
//!
//! Secrets (AMI secret, ARI password, admin token, webhook secret) come only
//! from the environment or the config file, never from flags, and `Debug`
//! never prints them.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::secret::{SecretString, redact_url};

/// The config file, as written. Every field is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub spec_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub managed_file: Option<PathBuf>,
    pub templates: Option<PathBuf>,
    pub listen: Option<String>,
    /// Digest realm for md5Cred hashes written by the API (Asterisk's default_realm).
    pub realm: Option<String>,
    pub read_only: Option<bool>,
    pub ami: Option<AmiFileConfig>,
    pub ari: Option<AriFileConfig>,
    /// Where the call log comes from: `cel` (every call, from CEL over AMI;
    /// the default when AMI is configured), `stasis` (only calls entering
    /// the Stasis app, over ARI), or `off`.
    pub call_log: Option<CallSource>,
    pub reconcile: Option<ReconcileFileConfig>,
    pub git: Option<GitFileConfig>,
    /// Secret for `POST /hooks/git` (or ASTERISK_GITOPS_WEBHOOK_SECRET).
    pub webhook_secret: Option<SecretString>,
    /// The admin API token (or ASTERISK_GITOPS_ADMIN_TOKEN).
    pub admin_token: Option<SecretString>,
    /// More API / UI users, each with the SHA-256 of their token (never the
    /// token: `asterisk-gitops hash-token` prints it). Their name and email
    /// sign the commits their edits make.
    pub users: Option<Vec<UserFileConfig>>,
    /// What phones register to, `host[:port]` (e.g. `pbx.example.com:5060`):
    /// shown with each extension's softphone settings.
    pub sip_server: Option<String>,
    /// Whether reading (GET routes, UI pages) needs no token (default true:
    /// the seed's GET routes had none). With false, reads need a bearer
    /// token or a signed-in session; /healthz and /readyz stay open.
    pub anonymous_read: Option<bool>,
    /// Where spec files may take secrets from (`passwordFile`, `passwordEnv`).
    pub secrets: Option<SecretsFileConfig>,
    /// The group the managed file belongs to (mode 0640), so that Asterisk
    /// can read it: a group name (`asterisk`) or a numeric gid. Default:
    /// the daemon's own group.
    pub managed_file_group: Option<String>,
    /// How desired objects reach Asterisk (`apply.target`).
    pub apply: Option<ApplyFileConfig>,
    /// Several Asterisk servers, each with its name, AMI, ARI and managed
    /// file (instead of the top-level `ami`/`ari`, which are one node).
    pub nodes: Option<Vec<NodeFileConfig>>,
    /// The line of each `nodes:` entry in the file (from [`FileConfig::load`]),
    /// for errors; empty when the config did not come from a file.
    #[serde(skip)]
    pub node_lines: Vec<u32>,
}

/// One Asterisk server of `nodes:`, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeFileConfig {
    /// The node's name (letters, digits, `.`, `-`, `_`; unique).
    pub name: String,
    pub ami: Option<AmiFileConfig>,
    pub ari: Option<AriFileConfig>,
    /// The managed pjsip file this node's Asterisk includes (the `file`
    /// target). Default: the top-level `managedFile` for the first node,
    /// `<stateDir>/nodes/<name>/pjsip_gitops.conf` for the others.
    pub managed_file: Option<PathBuf>,
}

/// One Asterisk server the daemon manages, resolved.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    pub ami: AmiSettings,
    pub ari: Option<AriSettings>,
    /// The managed file (the `file` target).
    pub managed_file: PathBuf,
    /// Where this node's own state lives (the ari target's record): the
    /// state directory itself for the first node, `<stateDir>/nodes/<name>`
    /// for the others.
    pub state_dir: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyFileConfig {
    /// `file` (the managed file and a reload; the default), `ari` or `realtime`.
    pub target: Option<String>,
    /// The `realtime` target's database (`apply.realtime`).
    pub realtime: Option<RealtimeFileConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RealtimeFileConfig {
    /// The PostgreSQL database holding Asterisk's `ps_endpoints`,
    /// `ps_auths` and `ps_aors` (or ASTERISK_GITOPS_REALTIME_DATABASE_URL);
    /// default: the daemon's own PostgreSQL database.
    pub database_url: Option<SecretString>,
}

/// How desired objects reach Asterisk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyTarget {
    /// The managed file, written atomically, and a reload of res_pjsip over AMI.
    #[default]
    File,
    /// Each changed extension's auth, aor and endpoint pushed through ARI's
    /// dynamic configuration into the astdb sorcery wizard: no reload.
    Ari,
    /// Each changed extension's rows written into Asterisk's realtime
    /// tables (`ps_endpoints`, `ps_auths`, `ps_aors`) in PostgreSQL, in one
    /// transaction per run: no reload, no push.
    Realtime,
}

impl ApplyTarget {
    pub fn parse(s: &str) -> Option<ApplyTarget> {
        match s.trim() {
            "file" => Some(ApplyTarget::File),
            "ari" => Some(ApplyTarget::Ari),
            "realtime" => Some(ApplyTarget::Realtime),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ApplyTarget::File => "file",
            ApplyTarget::Ari => "ari",
            ApplyTarget::Realtime => "realtime",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsFileConfig {
    /// `passwordFile` paths are relative to this directory (default: the
    /// spec directory's `secrets/`). No absolute path, no `..`, no symlink
    /// leading out of it.
    pub dir: Option<PathBuf>,
    /// A glob (`*`, `?`) that `passwordEnv` names must match (default
    /// `EXT_*`). The daemon's own variables (`ASTERISK_GITOPS_*`,
    /// `DATABASE_URL`) are refused whatever it says.
    pub env_pattern: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserFileConfig {
    pub name: String,
    pub email: String,
    /// Lower-case hex SHA-256 of the token.
    pub token_sha256: String,
}

/// A user allowed to write, by the hash of their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserToken {
    pub name: String,
    pub email: String,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitFileConfig {
    /// file://, https:// or ssh:// (or git@host:repo).
    pub url: Option<String>,
    pub branch: Option<String>,
    /// The spec directory inside the repository.
    pub path: Option<String>,
    /// Seconds between fetches when no webhook arrives (default 60).
    pub interval: Option<f64>,
    /// `direct` (push API edits to the branch) or `review` (push a new branch).
    pub mode: Option<String>,
    pub committer_name: Option<String>,
    pub committer_email: Option<String>,
    /// A private key for ssh remotes.
    pub ssh_key: Option<PathBuf>,
    /// A token for https remotes (or ASTERISK_GITOPS_GIT_TOKEN).
    pub token: Option<SecretString>,
}

/// The git source, resolved.
#[derive(Clone, Debug)]
pub struct GitSettings {
    pub url: String,
    pub branch: String,
    pub path: String,
    pub interval: Duration,
    pub review: bool,
    pub committer_name: String,
    pub committer_email: String,
    pub ssh_key: Option<PathBuf>,
    pub token: Option<SecretString>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AmiFileConfig {
    pub addr: Option<String>,
    pub user: Option<String>,
    pub secret: Option<SecretString>,
    /// A file holding the secret (first line).
    pub secret_file: Option<PathBuf>,
    /// Seconds to wait for any one AMI action.
    pub timeout: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AriFileConfig {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    /// The Stasis application name (default `callcenter`).
    pub app: Option<String>,
    /// Where the call logger's `continue` sends a call (default: the next
    /// priority of the same extension, as `Stasis()` returning would).
    pub continue_context: Option<String>,
    pub continue_extension: Option<String>,
    pub continue_priority: Option<i64>,
    /// Contexts whose callers are our extensions (default `[from-internal]`).
    pub internal_contexts: Option<Vec<String>>,
    /// Numbers of at most this many digits dialled from an internal context
    /// are internal calls; longer ones outbound (default 6).
    pub internal_max_digits: Option<usize>,
    /// Seconds after which a call still open is closed as `unknown` (default 14400).
    pub stale_call_after: Option<f64>,
    /// Seconds to wait for any one ARI request (default 5).
    pub timeout: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileFileConfig {
    /// Seconds between periodic resyncs (default 30, jittered ±10%).
    pub interval: Option<f64>,
    /// Milliseconds the spec directory must be quiet before a run (default 20;
    /// a longer burst, such as a `git pull`, is waited out, up to 2 s).
    pub debounce_ms: Option<u64>,
    /// Repair drift in Asterisk and hand edits of the managed file (default true).
    pub self_heal: Option<bool>,
    /// Refuse a run that deletes more than this share of the applied extensions (default 0.3).
    pub prune_max_share: Option<f64>,
    /// Refuse a run that deletes more than this many extensions (default: no count limit).
    pub prune_max_count: Option<usize>,
    /// Let the next runs delete past the prune guard (default false).
    pub allow_mass_delete: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut file: FileConfig = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: match e.location() {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            },
        })?;
        file.node_lines = node_lines(&text);
        Ok(file)
    }
}

/// The line of each entry of the top-level `nodes:` list (read again with
/// the spec parser, which keeps positions; serde_yaml keeps none).
fn node_lines(text: &str) -> Vec<u32> {
    use crate::core::spec::yaml::Node;
    let Ok(Some(Node::Map(entries, _))) = crate::core::spec::yaml::parse(text) else { return Vec::new() };
    entries
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (Node::Scalar(k), Node::Seq(items, _)) if k.text == "nodes" => {
                Some(items.iter().map(|i| i.pos().line).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

impl NodeFileConfig {
    /// `nodes[i]` (line N of the config file) for messages.
    fn place(i: usize, lines: &[u32]) -> String {
        match lines.get(i) {
            Some(line) => format!("nodes[{i}] (line {line})"),
            None => format!("nodes[{i}]"),
        }
    }
}

/// AMI connection settings, resolved.
#[derive(Clone, Debug)]
pub struct AmiSettings {
    pub addr: String,
    pub user: String,
    pub secret: SecretString,
    pub timeout: Duration,
}

/// Where the call log comes from (config `callLog`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallSource {
    /// Every call, from Asterisk's CEL events over AMI (`cel_manager`).
    Cel,
    /// Only calls that enter the Stasis app, from ARI.
    Stasis,
    Off,
}

/// ARI connection settings, resolved.
#[derive(Clone, Debug)]
pub struct AriSettings {
    pub url: String,
    pub user: String,
    pub password: SecretString,
    pub app: String,
    pub timeout: Duration,
    pub calls: CallLogConfig,
}

/// How the call loggers behave (the `ari:` section's call settings, which
/// the CEL logger uses too).
#[derive(Clone, Debug)]
pub struct CallLogConfig {
    /// Where `continue` sends the channel (default: the next priority).
    pub continue_to: ContinueTo,
    /// Contexts whose callers are our extensions (default `from-internal`).
    pub internal_contexts: Vec<String>,
    /// A number dialled from an internal context with at most this many
    /// digits (and only digits) is an internal call; longer is outbound
    /// (default 6, so `1002` is internal and `998901234567` outbound).
    pub internal_max_digits: usize,
    /// A call still open after this long is closed as `unknown`.
    pub stale_after: Duration,
    /// Parallel workers (channels are spread over them by id).
    pub workers: usize,
    /// Whether the Stasis app records calls (`false` when CEL logs every
    /// call: the app then only hands Stasis calls back to the dialplan).
    pub record: bool,
}

impl Default for CallLogConfig {
    fn default() -> Self {
        CallLogConfig {
            continue_to: ContinueTo::default(),
            internal_contexts: vec!["from-internal".into()],
            internal_max_digits: 6,
            stale_after: Duration::from_secs(4 * 3600),
            workers: 8,
            record: true,
        }
    }
}

/// Where the call logger's `continue` sends a channel (config
/// `ari.continueContext` etc.); all `None` means the next priority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContinueTo {
    pub context: Option<String>,
    pub extension: Option<String>,
    pub priority: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ReconcileSettings {
    pub interval: Duration,
    pub debounce: Duration,
    pub self_heal: bool,
    pub prune_max_share: f64,
    pub prune_max_count: Option<usize>,
    pub allow_mass_delete: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            interval: Duration::from_secs(30),
            debounce: Duration::from_millis(20),
            self_heal: true,
            prune_max_share: 0.3,
            prune_max_count: None,
            allow_mass_delete: false,
        }
    }
}

/// Everything the daemon and the commands run with, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This replica's name for leader election (`--instance-id`); `None`: host:pid and the listen address.
    pub instance_id: Option<String>,
    pub spec_dir: PathBuf,
    pub state_dir: PathBuf,
    pub database_url: String,
    pub managed_file: PathBuf,
    pub templates: Option<PathBuf>,
    pub listen: SocketAddr,
    pub realm: String,
    pub read_only: bool,
    pub ami: Option<AmiSettings>,
    pub ari: Option<AriSettings>,
    /// The call log's source, resolved: `cel` needs AMI, `stasis` ARI.
    pub call_log: CallSource,
    /// How calls are classified and closed (the `ari:` section's call
    /// settings, which the CEL logger uses too).
    pub calls: CallLogConfig,
    pub reconcile: ReconcileSettings,
    pub git: Option<GitSettings>,
    pub webhook_secret: Option<SecretString>,
    pub admin_token: Option<SecretString>,
    pub users: Vec<UserToken>,
    pub anonymous_read: bool,
    pub sip_server: Option<String>,
    /// Where spec files may take secrets from.
    pub secrets: crate::core::spec::SecretPolicy,
    /// Whether the config file set `secrets.dir` (otherwise a directory
    /// given to `validate` or `render` brings its own `secrets/`).
    pub secrets_dir_configured: bool,
    /// The managed file's group (gid), resolved from `managedFileGroup`.
    pub managed_file_group: Option<u32>,
    /// How desired objects reach Asterisk (`apply.target`, `--apply-target`).
    pub apply_target: ApplyTarget,
    /// The Asterisk servers managed, the first one the canary: the
    /// `nodes:` list, or the top-level `ami`/`ari` as one node named
    /// `default`; empty without AMI. `ami`, `ari` and `managed_file` above
    /// are the first node's.
    pub nodes: Vec<NodeSettings>,
    /// Whether the config file has `nodes:` (else the one node is the top-level `ami`/`ari`).
    pub nodes_configured: bool,
    /// The realtime tables' database (`apply.realtime.databaseUrl`, or the
    /// daemon's own PostgreSQL); `None` unless the target is `realtime`.
    pub realtime_database_url: Option<SecretString>,
}

/// What the command line said: the flags shared by the commands that need
/// them (each with its environment variable), parsed by clap straight into
/// this type (`cli::GlobalArgs` flattens it); `None` where it said nothing.
/// Each overrides the config file, which overrides the built-in defaults.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Directory holding the extension spec files (*.yaml, *.yml, searched recursively) [default: ./extensions.d].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_SPEC_DIR", value_name = "DIR")]
    pub spec_dir: Option<PathBuf>,
    /// Directory for the daemon's state: the SQLite database, the managed file, the git mirror [default: ./state].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: SQLite in the state directory].
    #[arg(long, global = true, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The managed pjsip file, included from pjsip.conf [default: STATE_DIR/pjsip_gitops.conf].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_MANAGED_FILE", value_name = "PATH")]
    pub managed_file: Option<PathBuf>,
    /// Use pjsip_gitops.conf.j2 from DIR instead of the built-in template.
    #[arg(long, global = true, env = "ASTERISK_GITOPS_TEMPLATES", value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Address the HTTP API and UI listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Asterisk's AMI, HOST:PORT [default: not configured].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_AMI_ADDR", value_name = "HOST:PORT")]
    pub ami_addr: Option<String>,
    /// The AMI user (its secret: ASTERISK_GITOPS_AMI_SECRET or the config file).
    #[arg(long, global = true, env = "ASTERISK_GITOPS_AMI_USER", value_name = "NAME")]
    pub ami_user: Option<String>,
    /// Asterisk's ARI base URL, e.g. http://127.0.0.1:8088 [default: not configured].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_ARI_URL", value_name = "URL")]
    pub ari_url: Option<String>,
    /// The ARI user (its password: ASTERISK_GITOPS_ARI_PASSWORD or the config file).
    #[arg(long, global = true, env = "ASTERISK_GITOPS_ARI_USER", value_name = "NAME")]
    pub ari_user: Option<String>,
    /// How changes reach Asterisk: `file` (the managed file and a reload), `ari` (pushed through ARI's dynamic configuration, no reload) or `realtime` (rows in Asterisk's realtime tables in PostgreSQL) [default: file].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_APPLY_TARGET", value_name = "file|ari|realtime")]
    pub apply_target: Option<String>,
    /// Serve no write routes and no edit controls.
    #[arg(long, global = true, env = "ASTERISK_GITOPS_READ_ONLY")]
    pub read_only: bool,
    /// Follow a git remote instead of reading the spec directory as it is (file://, https://, ssh://).
    #[arg(long, global = true, env = "ASTERISK_GITOPS_GIT_URL", value_name = "URL")]
    pub git_url: Option<String>,
    /// The branch to follow [default: main].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_GIT_BRANCH", value_name = "NAME")]
    pub git_branch: Option<String>,
    /// The spec directory inside the repository [default: extensions.d].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_GIT_PATH", value_name = "DIR")]
    pub git_path: Option<String>,
    /// Seconds between fetches when no webhook arrives [default: 60].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_GIT_INTERVAL", value_name = "SECS")]
    pub git_interval: Option<f64>,
    /// This replica's name among the `serve` replicas on one PostgreSQL, as /status shows the leader's [default: host:pid listen-address].
    #[arg(long, global = true, env = "ASTERISK_GITOPS_INSTANCE_ID", value_name = "NAME")]
    pub instance_id: Option<String>,
}

/// How log lines are written (`--log-format`, ASTERISK_GITOPS_LOG_FORMAT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // Plain comments, not doc comments: clap would list them as the values'
    // help and turn every command's short --help into the long one.
    // Human-readable lines; coloured only when standard error is a terminal.
    #[default]
    Text,
    // One JSON object a line (`timestamp`, `level`, `message`, the fields, `target`), never coloured.
    Json,
}

/// Reads a variable; unset and empty are the same.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Merges flags over the config file over defaults. Secrets come from
    /// `env` (ASTERISK_GITOPS_AMI_SECRET, ASTERISK_GITOPS_ARI_PASSWORD) or the file.
    pub fn resolve(flags: Overrides, file: FileConfig, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let state_dir = flags.state_dir.or(file.state_dir).unwrap_or_else(|| PathBuf::from("state"));
        let database_url = flags
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", state_dir.join("asterisk-gitops.db").display()));
        let managed_file = flags
            .managed_file
            .clone()
            .or(file.managed_file.clone())
            .unwrap_or_else(|| state_dir.join("pjsip_gitops.conf"));
        let listen_text = flags.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|e| ConfigError::Invalid {
            what: "listen",
            message: format!("{listen_text:?} is not an address like 127.0.0.1:8080 ({e})"),
        })?;

        let has_nodes = file.nodes.is_some();
        if has_nodes
            && (file.ami.is_some() || file.ari.is_some() || flags.ami_addr.is_some() || flags.ari_url.is_some())
        {
            return Err(ConfigError::Invalid {
                what: "nodes",
                message: "both `nodes:` and a top-level ami/ari (or --ami-addr / --ari-url) are given: \
                          write every Asterisk as a node, or use the top-level ami/ari alone"
                    .into(),
            });
        }
        let node_files = file.nodes.unwrap_or_default();
        if has_nodes && node_files.is_empty() {
            return Err(ConfigError::Invalid { what: "nodes", message: "`nodes:` is empty: list at least one".into() });
        }
        // The call settings live in the `ari:` section (the first node's with `nodes:`).
        let ari_file = match node_files.first() {
            Some(n) => n.ari.clone().unwrap_or_default(),
            None => file.ari.unwrap_or_default(),
        };
        let calls_defaults = CallLogConfig::default();
        let calls_cfg = CallLogConfig {
            continue_to: ContinueTo {
                context: ari_file.continue_context.clone(),
                extension: ari_file.continue_extension.clone(),
                priority: ari_file.continue_priority,
            },
            internal_contexts: ari_file.internal_contexts.clone().unwrap_or(calls_defaults.internal_contexts),
            internal_max_digits: ari_file.internal_max_digits.unwrap_or(calls_defaults.internal_max_digits),
            stale_after: ari_file
                .stale_call_after
                .map(|s| Duration::from_secs_f64(s.clamp(1.0, 7.0 * 86400.0)))
                .unwrap_or(calls_defaults.stale_after),
            ..calls_defaults
        };

        let (ami, ari, managed_file, nodes) = if has_nodes {
            let mut nodes: Vec<NodeSettings> = Vec::new();
            for (i, n) in node_files.into_iter().enumerate() {
                let place = NodeFileConfig::place(i, &file.node_lines);
                let name = n.name.trim().to_string();
                if name.is_empty()
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    || name.starts_with('.')
                {
                    return Err(ConfigError::Invalid {
                        what: "nodes",
                        message: format!(
                            "{place}: name {:?} must be non-empty letters, digits, `-`, `_` or `.` (not starting with `.`)",
                            n.name
                        ),
                    });
                }
                if let Some(j) = nodes.iter().position(|o| o.name == name) {
                    return Err(ConfigError::Invalid {
                        what: "nodes",
                        message: format!(
                            "{place}: name {name:?} is already the name of {}",
                            NodeFileConfig::place(j, &file.node_lines)
                        ),
                    });
                }
                let Some(ami_file) = n.ami.filter(|a| a.addr.is_some()) else {
                    return Err(ConfigError::Invalid {
                        what: "nodes",
                        message: format!("{place} ({name}): no ami.addr: every node needs its AMI"),
                    });
                };
                let secret_hint = format!("nodes[{i}].ami.secret or .secretFile in the config file");
                let ami = resolve_ami(None, None, ami_file, None, &secret_hint)?
                    .ok_or_else(|| ConfigError::Invalid { what: "nodes", message: format!("{place}: no ami") })?;
                let password_hint = format!("nodes[{i}].ari.password or .passwordFile in the config file");
                let ari = resolve_ari(None, None, n.ari.unwrap_or_default(), None, &calls_cfg, &password_hint)?;
                let (managed_file, node_state) = if i == 0 {
                    (n.managed_file.or(flags.managed_file.clone()).or(file.managed_file.clone()), state_dir.clone())
                } else {
                    let dir = state_dir.join("nodes").join(&name);
                    (n.managed_file, dir)
                };
                let managed_file = managed_file.unwrap_or_else(|| node_state.join("pjsip_gitops.conf"));
                if let Some(j) = nodes.iter().position(|o| o.managed_file == managed_file) {
                    return Err(ConfigError::Invalid {
                        what: "nodes",
                        message: format!(
                            "{place} ({name}): managedFile {} is already {}'s: each node needs a file of its own",
                            managed_file.display(),
                            nodes[j].name
                        ),
                    });
                }
                nodes.push(NodeSettings { name, ami, ari, managed_file, state_dir: node_state });
            }
            let first = &nodes[0];
            (Some(first.ami.clone()), first.ari.clone(), first.managed_file.clone(), nodes)
        } else {
            let ami = resolve_ami(
                flags.ami_addr,
                flags.ami_user,
                file.ami.unwrap_or_default(),
                env("ASTERISK_GITOPS_AMI_SECRET"),
                "ASTERISK_GITOPS_AMI_SECRET or ami.secret / ami.secretFile in the config file",
            )?;
            let ari = resolve_ari(
                flags.ari_url,
                flags.ari_user,
                ari_file,
                env("ASTERISK_GITOPS_ARI_PASSWORD"),
                &calls_cfg,
                "ASTERISK_GITOPS_ARI_PASSWORD or ari.password / ari.passwordFile in the config file",
            )?;
            let nodes = ami
                .iter()
                .map(|a| NodeSettings {
                    name: "default".into(),
                    ami: a.clone(),
                    ari: ari.clone(),
                    managed_file: managed_file.clone(),
                    state_dir: state_dir.clone(),
                })
                .collect();
            (ami, ari, managed_file, nodes)
        };

        let call_log = match (file.call_log, &ami, &ari) {
            (Some(CallSource::Cel), None, _) => {
                return Err(ConfigError::Invalid {
                    what: "callLog",
                    message: "callLog: cel reads CEL events over AMI, but no AMI is configured (--ami-addr)".into(),
                });
            }
            (Some(CallSource::Stasis), _, None) => {
                return Err(ConfigError::Invalid {
                    what: "callLog",
                    message: "callLog: stasis runs an ARI Stasis app, but no ARI is configured (--ari-url)".into(),
                });
            }
            (Some(s), _, _) => s,
            (None, Some(_), _) => CallSource::Cel,
            (None, None, Some(_)) => CallSource::Stasis,
            (None, None, None) => CallSource::Off,
        };

        let r = file.reconcile.unwrap_or_default();
        let defaults = ReconcileSettings::default();
        let share = r.prune_max_share.unwrap_or(defaults.prune_max_share);
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::Invalid {
                what: "reconcile.pruneMaxShare",
                message: format!("{share} is not a share between 0 and 1"),
            });
        }
        let reconcile = ReconcileSettings {
            interval: r.interval.map_or(defaults.interval, |s| Duration::from_secs_f64(s.clamp(1.0, 86_400.0))),
            debounce: r.debounce_ms.map_or(defaults.debounce, Duration::from_millis),
            self_heal: r.self_heal.unwrap_or(defaults.self_heal),
            prune_max_share: share,
            prune_max_count: r.prune_max_count,
            allow_mass_delete: r.allow_mass_delete.unwrap_or(false),
        };

        let g = file.git.unwrap_or_default();
        let git = match flags.git_url.or(g.url) {
            None => None,
            Some(url) => {
                let mode = g.mode.unwrap_or_else(|| "direct".into());
                if mode != "direct" && mode != "review" {
                    return Err(ConfigError::Invalid {
                        what: "git.mode",
                        message: format!("{mode:?}: use direct or review"),
                    });
                }
                Some(GitSettings {
                    url,
                    branch: flags.git_branch.or(g.branch).unwrap_or_else(|| "main".into()),
                    path: flags.git_path.or(g.path).unwrap_or_else(|| "extensions.d".into()),
                    interval: Duration::from_secs_f64(
                        flags.git_interval.or(g.interval).unwrap_or(60.0).clamp(1.0, 86_400.0),
                    ),
                    review: mode == "review",
                    committer_name: g.committer_name.unwrap_or_else(|| "asterisk-gitops".into()),
                    committer_email: g.committer_email.unwrap_or_else(|| "asterisk-gitops@localhost".into()),
                    ssh_key: g.ssh_key,
                    token: env("ASTERISK_GITOPS_GIT_TOKEN").map(SecretString::new).or(not_blank(g.token, "git.token")?),
                })
            }
        };

        let spec_dir = flags.spec_dir.or(file.spec_dir).unwrap_or_else(|| PathBuf::from("extensions.d"));
        let secrets_file = file.secrets.unwrap_or_default();
        let env_pattern =
            secrets_file.env_pattern.unwrap_or_else(|| crate::core::spec::policy::DEFAULT_ENV_PATTERN.into());
        if env_pattern.is_empty() || !env_pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b"_*?".contains(&b)) {
            return Err(ConfigError::Invalid {
                what: "secrets.envPattern",
                message: format!("{env_pattern:?} is not a glob of variable-name characters, `*` and `?` (e.g. EXT_*)"),
            });
        }
        let secrets_dir_configured = secrets_file.dir.is_some();
        let secrets = crate::core::spec::SecretPolicy {
            dir: secrets_file.dir.unwrap_or_else(|| spec_dir.join("secrets")),
            env_pattern,
        };
        let managed_file_group = match file.managed_file_group.as_deref() {
            None => None,
            Some(g) => Some(
                group_id(g).map_err(|e| ConfigError::Invalid { what: "managedFileGroup", message: e.to_string() })?,
            ),
        };

        let apply_file = file.apply.unwrap_or_default();
        let target_text = flags.apply_target.or(apply_file.target).unwrap_or_else(|| "file".into());
        let apply_target = ApplyTarget::parse(&target_text).ok_or_else(|| ConfigError::Invalid {
            what: "apply.target",
            message: format!("{target_text:?}: use file, ari or realtime"),
        })?;
        if let Some(n) = nodes.iter().find(|n| apply_target == ApplyTarget::Ari && n.ari.is_none()) {
            return Err(ConfigError::Invalid {
                what: "apply.target",
                message: format!("ari pushes through ARI, which node {} has no `ari:` for", n.name),
            });
        }
        let realtime_database_url = if apply_target == ApplyTarget::Realtime {
            Some(realtime_url(
                env("ASTERISK_GITOPS_REALTIME_DATABASE_URL"),
                apply_file.realtime.and_then(|r| r.database_url),
                &database_url,
            )?)
        } else {
            None
        };
        if apply_target == ApplyTarget::Ari && ari.is_none() {
            return Err(ConfigError::Invalid {
                what: "apply.target",
                message: "ari pushes through ARI, which is not configured (--ari-url, --ari-user and ASTERISK_GITOPS_ARI_PASSWORD)".into(),
            });
        }

        let mut users = Vec::new();
        for (i, u) in file.users.unwrap_or_default().into_iter().enumerate() {
            let bytes = hex::decode(u.token_sha256.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
            let Some(sha256) = bytes else {
                return Err(ConfigError::Invalid {
                    what: "users",
                    message: format!(
                        "users[{i}] ({}): tokenSha256 must be 64 hex digits (asterisk-gitops hash-token prints it)",
                        u.name
                    ),
                });
            };
            users.push(UserToken { name: u.name, email: u.email, sha256 });
        }
        Ok(Settings {
            instance_id: flags.instance_id.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            users,
            anonymous_read: file.anonymous_read.unwrap_or(true),
            sip_server: file.sip_server,
            git,
            webhook_secret: env("ASTERISK_GITOPS_WEBHOOK_SECRET")
                .map(SecretString::new)
                .or(not_blank(file.webhook_secret, "webhookSecret")?),
            admin_token: env("ASTERISK_GITOPS_ADMIN_TOKEN")
                .map(SecretString::new)
                .or(not_blank(file.admin_token, "adminToken")?),
            spec_dir,
            secrets,
            secrets_dir_configured,
            managed_file_group,
            apply_target,
            realtime_database_url,
            state_dir,
            database_url,
            managed_file,
            templates: flags.templates.or(file.templates),
            listen,
            realm: file.realm.unwrap_or_else(|| crate::secret::DEFAULT_REALM.into()),
            read_only: flags.read_only || file.read_only.unwrap_or(false),
            call_log,
            calls: calls_cfg,
            ami,
            ari,
            reconcile,
            nodes,
            nodes_configured: has_nodes,
        })
    }

    /// The secret policy for loading `paths` (the command line's): the
    /// configured one, except that without `secrets.dir` one directory
    /// given brings its own `secrets/`.
    pub fn secret_policy_for(&self, paths: &[PathBuf]) -> crate::core::spec::SecretPolicy {
        match paths {
            [dir] if !self.secrets_dir_configured && dir.is_dir() => crate::core::spec::SecretPolicy {
                dir: dir.join("secrets"),
                env_pattern: self.secrets.env_pattern.clone(),
            },
            _ => self.secrets.clone(),
        }
    }

    /// The database URL with any password replaced, for logs and status.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// An `ami:` section (with the flags and the environment's secret over
/// it), resolved; `None` without an address.
fn resolve_ami(
    addr_flag: Option<String>,
    user_flag: Option<String>,
    ami_file: AmiFileConfig,
    env_secret: Option<String>,
    hint: &str,
) -> Result<Option<AmiSettings>, ConfigError> {
    let Some(addr) = addr_flag.or(ami_file.addr) else { return Ok(None) };
    let user = user_flag.or(ami_file.user).ok_or(ConfigError::Invalid {
        what: "ami",
        message: "an AMI address is set but no user (--ami-user or ASTERISK_GITOPS_AMI_USER)".into(),
    })?;
    let secret = secret_from(
        env_secret,
        not_blank(ami_file.secret, "ami.secret")?,
        ami_file.secret_file.as_deref(),
        "ami",
        hint,
    )?;
    let timeout = Duration::from_secs_f64(ami_file.timeout.unwrap_or(5.0).clamp(0.1, 600.0));
    Ok(Some(AmiSettings { addr, user, secret, timeout }))
}

/// An `ari:` section, resolved; `None` without a URL.
fn resolve_ari(
    url_flag: Option<String>,
    user_flag: Option<String>,
    ari_file: AriFileConfig,
    env_password: Option<String>,
    calls: &CallLogConfig,
    hint: &str,
) -> Result<Option<AriSettings>, ConfigError> {
    let Some(url) = url_flag.or(ari_file.url) else { return Ok(None) };
    let user = user_flag.or(ari_file.user).ok_or(ConfigError::Invalid {
        what: "ari",
        message: "an ARI URL is set but no user (--ari-user or ASTERISK_GITOPS_ARI_USER)".into(),
    })?;
    let password = secret_from(
        env_password,
        not_blank(ari_file.password, "ari.password")?,
        ari_file.password_file.as_deref(),
        "ari",
        hint,
    )?;
    let calls = CallLogConfig { record: true, ..calls.clone() };
    let timeout = Duration::from_secs_f64(ari_file.timeout.unwrap_or(5.0).clamp(0.1, 600.0));
    let app = ari_file.app.unwrap_or_else(|| "callcenter".into());
    Ok(Some(AriSettings { url, user, password, app, timeout, calls }))
}

/// The realtime target's database: the variable, the config file, else the
/// daemon's own database when that is PostgreSQL.
fn realtime_url(env: Option<String>, file: Option<SecretString>, own: &str) -> Result<SecretString, ConfigError> {
    let what = "apply.realtime.databaseUrl";
    let url = match env.map(SecretString::new).or(file) {
        Some(url) => url,
        None if own.starts_with("postgres://") || own.starts_with("postgresql://") => {
            SecretString::new(own.to_string())
        }
        None => {
            return Err(ConfigError::Invalid {
                what,
                message: "the realtime target writes Asterisk's tables in PostgreSQL and the daemon's own database is not PostgreSQL: set apply.realtime.databaseUrl or ASTERISK_GITOPS_REALTIME_DATABASE_URL".into(),
            });
        }
    };
    let text = url.expose().trim();
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(ConfigError::Invalid {
            what,
            message: format!("{}: the realtime tables live in PostgreSQL (postgres://…)", redact_url(text)),
        });
    }
    Ok(url)
}

fn secret_from(
    env: Option<String>,
    file_value: Option<SecretString>,
    file_path: Option<&Path>,
    what: &'static str,
    hint: &str,
) -> Result<SecretString, ConfigError> {
    if let Some(v) = env {
        return Ok(SecretString::new(v));
    }
    if let Some(v) = file_value {
        return Ok(v);
    }
    if let Some(path) = file_path {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            what,
            message: format!("cannot read the secret file {}: {e}", path.display()),
        })?;
        let first = text.lines().next().unwrap_or("").to_string();
        if first.is_empty() {
            return Err(ConfigError::Invalid { what, message: format!("the secret file {} is empty", path.display()) });
        }
        return Ok(SecretString::new(first));
    }
    Err(ConfigError::Invalid { what, message: format!("no secret configured: set {hint}") })
}

/// A secret written in the config file, refused when it is empty or only
/// blanks: an empty webhook secret would make any signature computed with
/// an empty key valid, an empty token would let anyone in.
fn not_blank(value: Option<SecretString>, what: &'static str) -> Result<Option<SecretString>, ConfigError> {
    match value {
        Some(v) if v.expose().trim().is_empty() => Err(ConfigError::Invalid {
            what,
            message:
                "is empty: remove the key to turn it off, or set a value (an environment variable, too, overrides it)"
                    .into(),
        }),
        other => Ok(other),
    }
}

/// Why a managed file group is not a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot read /etc/group: {0}")]
    ReadGroups(#[source] std::io::Error),
    #[error("no group {0:?} in /etc/group (write a group name or a numeric gid)")]
    Unknown(String),
}

/// A group name (looked up in /etc/group) or a numeric gid, as a gid.
pub fn group_id(group: &str) -> Result<u32, GroupError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(GroupError::ReadGroups)?;
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let gid = parts.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| GroupError::Unknown(group.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_run_on_a_fresh_machine() {
        let s = Settings::resolve(Overrides::default(), FileConfig::default(), &no_env).expect("resolves");
        assert_eq!(s.spec_dir, PathBuf::from("extensions.d"));
        assert_eq!(s.database_url, "sqlite://state/asterisk-gitops.db?mode=rwc");
        assert_eq!(s.managed_file, PathBuf::from("state/pjsip_gitops.conf"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(s.ami.is_none() && s.ari.is_none());
        assert!(s.reconcile.self_heal);
        assert_eq!(s.secrets.dir, PathBuf::from("extensions.d/secrets"));
        assert_eq!(s.secrets.env_pattern, "EXT_*");
        assert_eq!(s.managed_file_group, None);
        assert_eq!(s.instance_id, None, "host:pid and the listen address, chosen by serve");
    }

    #[test]
    fn the_instance_id_is_taken_trimmed_and_a_blank_one_is_the_default() {
        let named = Overrides { instance_id: Some(" pbx-a ".into()), ..Default::default() };
        let s = Settings::resolve(named, FileConfig::default(), &no_env).expect("resolves");
        assert_eq!(s.instance_id.as_deref(), Some("pbx-a"));
        let blank = Overrides { instance_id: Some("  ".into()), ..Default::default() };
        assert_eq!(Settings::resolve(blank, FileConfig::default(), &no_env).expect("resolves").instance_id, None);
    }

    #[test]
    fn the_secrets_policy_and_the_managed_files_group_come_from_the_file() {
        let file: FileConfig =
            serde_yaml::from_str("secrets: {dir: /etc/pbx-secrets, envPattern: 'PBX_*'}\nmanagedFileGroup: '0'\n")
                .expect("parses");
        let s = Settings::resolve(Overrides::default(), file, &no_env).expect("resolves");
        assert_eq!(s.secrets.dir, PathBuf::from("/etc/pbx-secrets"));
        assert_eq!(s.secrets.env_pattern, "PBX_*");
        assert_eq!(s.managed_file_group, Some(0));
        let file: FileConfig = serde_yaml::from_str("managedFileGroup: no-such-group-here\n").expect("parses");
        let err = Settings::resolve(Overrides::default(), file, &no_env).expect_err("unknown group");
        assert!(
            err.to_string().contains("managedFileGroup") && err.to_string().contains("no-such-group-here"),
            "{err}"
        );
        let file: FileConfig = serde_yaml::from_str("secrets: {envPattern: 'A B'}\n").expect("parses");
        assert!(Settings::resolve(Overrides::default(), file, &no_env).is_err());
    }

    #[test]
    fn flags_beat_the_file_and_secrets_come_from_env_first() {
        let file: FileConfig = serde_yaml::from_str(
            "specDir: from-file\nami: {addr: '127.0.0.1:5038', user: gitops, secret: file-secret}\nreconcile: {pruneMaxShare: 0.5}\n",
        )
        .expect("parses");
        let flags = Overrides { spec_dir: Some("from-flag".into()), ..Default::default() };
        let env = |k: &str| (k == "ASTERISK_GITOPS_AMI_SECRET").then(|| "env-secret".to_string());
        let s = Settings::resolve(flags, file, &env).expect("resolves");
        assert_eq!(s.spec_dir, PathBuf::from("from-flag"));
        let ami = s.ami.expect("ami configured");
        assert_eq!(ami.secret.expose(), "env-secret");
        assert_eq!(s.reconcile.prune_max_share, 0.5);
        assert!(!format!("{ami:?}").contains("env-secret"));
    }

    #[test]
    fn an_ami_address_without_a_secret_is_a_clear_error() {
        let flags =
            Overrides { ami_addr: Some("127.0.0.1:5038".into()), ami_user: Some("u".into()), ..Default::default() };
        let err = Settings::resolve(flags, FileConfig::default(), &no_env).expect_err("no secret");
        assert!(err.to_string().contains("ASTERISK_GITOPS_AMI_SECRET"), "{err}");
    }

    #[test]
    fn the_apply_target_is_file_by_default_and_ari_needs_ari() {
        let s = Settings::resolve(Overrides::default(), FileConfig::default(), &no_env).expect("resolves");
        assert_eq!(s.apply_target, ApplyTarget::File);
        let file: FileConfig = serde_yaml::from_str("apply: {target: ari}\n").expect("parses");
        let err = Settings::resolve(Overrides::default(), file, &no_env).expect_err("ari without ARI");
        assert!(err.to_string().contains("apply.target") && err.to_string().contains("--ari-url"), "{err}");
        let file: FileConfig =
            serde_yaml::from_str("apply: {target: file}\nari: {url: 'http://127.0.0.1:8088', user: u, password: p}\n")
                .expect("parses");
        let flags = Overrides { apply_target: Some("ari".into()), ..Default::default() };
        assert_eq!(Settings::resolve(flags, file, &no_env).expect("resolves").apply_target, ApplyTarget::Ari);
        let flags = Overrides { apply_target: Some("reload".into()), ..Default::default() };
        let err = Settings::resolve(flags, FileConfig::default(), &no_env).expect_err("unknown target");
        assert!(err.to_string().contains("\"reload\": use file, ari or realtime"), "{err}");
    }

    #[test]
    fn the_realtime_target_takes_its_own_url_or_the_daemons_postgresql_and_never_sqlite() {
        let flags = || Overrides { apply_target: Some("realtime".into()), ..Default::default() };
        let err = Settings::resolve(flags(), FileConfig::default(), &no_env).expect_err("SQLite and no URL");
        assert!(err.to_string().contains("apply.realtime.databaseUrl"), "{err}");
        let own = Overrides { database_url: Some("postgres://gitops:pw1@db/gitops".into()), ..flags() };
        let s = Settings::resolve(own, FileConfig::default(), &no_env).expect("resolves");
        assert_eq!(s.realtime_database_url.expect("set").expose(), "postgres://gitops:pw1@db/gitops");
        let file: FileConfig =
            serde_yaml::from_str("apply: {realtime: {databaseUrl: 'postgres://rt:pw2@db/asterisk'}}\n")
                .expect("parses");
        let s = Settings::resolve(flags(), file, &no_env).expect("resolves");
        assert_eq!(s.realtime_database_url.as_ref().expect("set").expose(), "postgres://rt:pw2@db/asterisk");
        assert!(!format!("{s:?}").contains("pw2"), "the URL is never printed");
        let env = |k: &str| (k == "ASTERISK_GITOPS_REALTIME_DATABASE_URL").then(|| "mysql://rt:pw3@db/x".to_string());
        let err = Settings::resolve(flags(), FileConfig::default(), &env).expect_err("not PostgreSQL");
        assert!(err.to_string().contains("PostgreSQL") && !err.to_string().contains("pw3"), "{err}");
    }

    #[test]
    fn unknown_config_keys_are_refused_with_their_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("asterisk-gitops.yaml");
        std::fs::write(&path, "specDir: x\nspec_dir: y\n").expect("write");
        let err = FileConfig::load(&path).expect_err("unknown field");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn the_example_config_file_loads_and_resolves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/asterisk-gitops.yaml");
        let file = FileConfig::load(&path).expect("the example parses");
        let env = |k: &str| match k {
            "ASTERISK_GITOPS_AMI_SECRET" => Some("a".to_string()),
            "ASTERISK_GITOPS_ARI_PASSWORD" => Some("b".to_string()),
            _ => None,
        };
        let s = Settings::resolve(Overrides::default(), file, &env).expect("resolves");
        let ari = s.ari.expect("ARI configured");
        assert_eq!(ari.app, "callcenter");
        assert_eq!(ari.calls.internal_max_digits, 6);
        assert_eq!(ari.calls.stale_after, Duration::from_secs(14400));
        assert_eq!(ari.calls.continue_to, ContinueTo::default());
    }

    #[test]
    fn an_empty_secret_in_the_file_is_refused_not_taken_as_a_key() {
        for yaml in [
            "webhookSecret: ''\n",
            "adminToken: '  '\n",
            "ami: {addr: '127.0.0.1:5038', user: u, secret: ''}\n",
            "ari: {url: 'http://127.0.0.1:8088', user: u, password: ''}\n",
            "git: {url: 'https://example.invalid/r.git', token: ''}\n",
        ] {
            let file: FileConfig = serde_yaml::from_str(yaml).expect("parses");
            let err = Settings::resolve(Overrides::default(), file, &no_env).expect_err(yaml);
            assert!(err.to_string().contains("is empty"), "{yaml}: {err}");
        }
        let file: FileConfig = serde_yaml::from_str("webhookSecret: s3cret-of-the-hook\n").expect("parses");
        let s = Settings::resolve(Overrides::default(), file, &no_env).expect("resolves");
        assert_eq!(s.webhook_secret.map(|w| w.expose().to_string()).as_deref(), Some("s3cret-of-the-hook"));
    }

    const TWO_NODES: &str = "nodes:\n  - name: a\n    ami: {addr: '127.0.0.1:5038', user: u, secret: sa}\n    managedFile: /tmp/a.conf\n  - name: b\n    ami: {addr: '127.0.0.1:5039', user: u, secret: sb}\n    ari: {url: 'http://127.0.0.1:8089', user: u, password: pb}\n";

    fn load_text(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("asterisk-gitops.yaml");
        std::fs::write(&path, text).expect("write");
        Settings::resolve(Overrides::default(), FileConfig::load(&path)?, &no_env)
    }

    #[test]
    fn nodes_resolve_in_order_the_first_one_standing_for_the_top_level() {
        let s = load_text(TWO_NODES).expect("resolves");
        assert!(s.nodes_configured);
        let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.ami.as_ref().map(|a| a.addr.as_str()), Some("127.0.0.1:5038"));
        assert_eq!(s.managed_file, PathBuf::from("/tmp/a.conf"));
        assert_eq!(s.nodes[1].managed_file, PathBuf::from("state/nodes/b/pjsip_gitops.conf"));
        assert_eq!(s.nodes[1].ami.secret.expose(), "sb");
        assert!(s.nodes[1].ari.is_some() && s.nodes[0].ari.is_none());
        assert!(!format!("{:?}", s.nodes).contains("sb"), "no secret in Debug");
        // Without `nodes:`, the top-level AMI is one node named `default`.
        let file: FileConfig =
            serde_yaml::from_str("ami: {addr: '127.0.0.1:5038', user: u, secret: s}\n").expect("parses");
        let s = Settings::resolve(Overrides::default(), file, &no_env).expect("resolves");
        assert!(!s.nodes_configured);
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].name, "default");
        assert_eq!(s.nodes[0].managed_file, s.managed_file);
    }

    #[test]
    fn duplicate_or_empty_node_names_are_refused_with_their_line() {
        let dup = TWO_NODES.replace("name: b", "name: a");
        let err = load_text(&dup).expect_err("duplicate");
        assert!(
            err.to_string().contains("nodes[1] (line 5)") && err.to_string().contains("nodes[0] (line 2)"),
            "{err}"
        );
        let empty = TWO_NODES.replace("name: b", "name: ''");
        let err = load_text(&empty).expect_err("empty name");
        assert!(
            err.to_string().contains("nodes[1] (line 5)") && err.to_string().contains("must be non-empty"),
            "{err}"
        );
        let slash = TWO_NODES.replace("name: b", "name: ../b");
        assert!(load_text(&slash).is_err(), "a name is a directory name");
        let same_file = TWO_NODES.replace("    ari:", "    managedFile: /tmp/a.conf\n    ari:");
        let err = load_text(&same_file).expect_err("shared managed file");
        assert!(err.to_string().contains("already a's"), "{err}");
        let no_ami = "nodes:\n  - name: a\n";
        assert!(load_text(no_ami).expect_err("no ami").to_string().contains("no ami.addr"));
        assert!(load_text("nodes: []\n").expect_err("empty list").to_string().contains("empty"));
    }

    #[test]
    fn nodes_and_a_top_level_ami_or_ari_are_refused_together() {
        for extra in [
            "ami: {addr: '127.0.0.1:5040', user: u, secret: s}\n",
            "ari: {url: 'http://127.0.0.1:8088', user: u, password: p}\n",
        ] {
            let err = load_text(&format!("{TWO_NODES}{extra}")).expect_err(extra);
            assert!(err.to_string().contains("both `nodes:` and a top-level ami/ari"), "{err}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, TWO_NODES).expect("write");
        let flags = Overrides { ami_addr: Some("127.0.0.1:5041".into()), ..Default::default() };
        let err = Settings::resolve(flags, FileConfig::load(&path).expect("loads"), &no_env).expect_err("flag too");
        assert!(err.to_string().contains("both `nodes:`"), "{err}");
        // The ari target needs ARI on every node.
        let err = load_text(&format!("{TWO_NODES}apply: {{target: ari}}\n")).expect_err("node a has no ari");
        assert!(err.to_string().contains("node a has no `ari:`"), "{err}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/pbx"), "postgres://app:***@db:5432/pbx");
        assert_eq!(redact_url("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(redact_url("sqlite://state/x.db"), "sqlite://state/x.db");
    }
}
