//! The command line. Argument parsing and output only: the work is done by
//! the library modules, and errors become exit codes here.
//!
//! Exit codes: 0 success; 1 failure (invalid specs, a failed run); 2 usage
//! error (clap's own, and ours for bad arguments).

use crate::config::{self, FileConfig, LogFormat, Overrides, Settings};
use crate::core::diag::{self, Format};
use crate::core::render::{Renderer, SourceInfo};
use crate::core::spec::{self, LoadOptions, check};
use crate::secret::{self, ProcessSecrets};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "asterisk-gitops",
    version,
    about = "Manage Asterisk PJSIP extensions the GitOps way",
    long_about = "Manage Asterisk PJSIP extensions the GitOps way.\n\n\
        Extensions are declared in YAML files (extensions.d/*.yaml) kept in git. \
        asterisk-gitops validates them, renders the managed pjsip config, and keeps a \
        running Asterisk and a database equal to what the files say.",
    after_help = "Exit codes: 0 success, 1 failure (invalid specs, a failed run), 2 usage error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by the commands that need them. Each overrides the config
/// file, which overrides the built-in defaults. Secrets are never flags: the
/// AMI secret and ARI password come from ASTERISK_GITOPS_AMI_SECRET and
/// ASTERISK_GITOPS_ARI_PASSWORD or the config file.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file (YAML).
    #[arg(long, global = true, env = "ASTERISK_GITOPS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings' flags, parsed straight into what `Settings::resolve` takes.
    #[command(flatten)]
    pub overrides: Overrides,
    /// Log lines as `text` (for people; coloured only on a terminal) or `json` (one object a line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "ASTERISK_GITOPS_LOG_FORMAT",
        value_name = "text|json",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// The settings these flags, the config file and the defaults add up to.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Ok(Settings::resolve(self.overrides.clone(), file, &config::process_env)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check spec files and report every problem with file:line:column.
    ///
    /// Exits 0 when the specs are valid, 1 when there are errors (or, with
    /// --strict, warnings), 2 on a usage error. In CI, `--format github`
    /// turns each problem into an annotation on the pull request.
    Validate(ValidateArgs),
    /// Render the managed pjsip config from the spec files.
    ///
    /// Secrets named by passwordEnv and passwordFile are read now; a missing
    /// one is an error naming the extension. Nothing is written when the specs
    /// have errors.
    Render(RenderArgs),
    /// Print the JSON Schema of a spec file (for editors and CI).
    Schema,
    /// Show what a reconcile would change: extensions (field by field), drift,
    /// and the managed file's diff (secrets masked). Changes nothing.
    ///
    /// With --detailed-exitcode: 0 nothing to do, 2 changes pending, 1 error
    /// (as `terraform plan -detailed-exitcode`).
    Plan(PlanArgs),
    /// Apply the specs now: render, write, reload Asterisk, verify, record.
    ///
    /// Asks for confirmation on a terminal unless --yes is given.
    Apply(ApplyArgs),
    /// Run the daemon: reconcile on file changes, periodically and on
    /// request; serve the HTTP API. Stops cleanly on SIGINT/SIGTERM.
    Serve,
    /// Print what the live Asterisk reports: every node's reachability,
    /// version and registrations, then (one node) its endpoints.
    ///
    /// Exits 0 when every node answered, 1 when one did not.
    Status(StatusArgs),
    /// Print the md5Cred for an extension's password, to paste into a spec file.
    ///
    /// md5Cred = md5("EXTENSION:REALM:PASSWORD"). It is not the password, but
    /// it opens this one account: treat it as a credential. Give PASSWORD as
    /// `-` (or leave it out) to read it from standard input, which keeps it
    /// out of your shell history.
    HashPassword(HashPasswordArgs),
    /// Print the SHA-256 of an API / UI token, for a `users:` entry's
    /// `tokenSha256` in the config file (the file never holds the token).
    /// The token is read from standard input, one line.
    HashToken,
    /// Turn an existing configuration into spec files (adopting a running PBX).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write the declared extensions out in another form.
    #[command(subcommand)]
    Export(ExportCommand),
    /// The realtime apply target's database.
    #[command(subcommand)]
    Realtime(RealtimeCommand),
}

#[derive(Debug, Subcommand)]
pub enum RealtimeCommand {
    /// Create Asterisk 22's realtime tables (ps_endpoints, ps_auths,
    /// ps_aors, with the columns Asterisk's own migrations give them) and
    /// the daemon's inventory, where they do not exist. Tables that exist
    /// are left as they are.
    ///
    /// The database is the realtime target's: ASTERISK_GITOPS_REALTIME_DATABASE_URL,
    /// else `apply.realtime.databaseUrl`, else the daemon's own PostgreSQL
    /// (`--database-url`, DATABASE_URL).
    Init,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Read a PJSIP configuration (with its #include and #tryinclude files,
    /// templates and inheritance) and write a spec file for its extensions.
    ///
    /// Each endpoint with an auth and an aor of its own name becomes an
    /// entry; a plain-text password becomes md5Cred (hashed with the auth's
    /// realm, the configuration's default_realm, or --realm); values every
    /// entry shares become `defaults`; options no field names go to
    /// `options`. What cannot be carried (transports, trunks, registrations,
    /// identifies, …) is listed with the reason and left alone. The same
    /// input always writes the same files. Exits 1 when the configuration
    /// cannot be read (a missing #include), 0 otherwise.
    Pjsip(ImportPjsipArgs),
    /// Read a CSV of extensions (FreePBX Bulk Handler's extensions export,
    /// or our own CSV: a header of spec field names, `endpoint.NAME` etc.
    /// for options) and write a spec file of its rows.
    ///
    /// Every row is checked by the spec's rules; any bad row is reported
    /// by line and column and nothing is written (exit 1). Passwords
    /// become md5Cred.
    Csv(ImportCsvArgs),
}

#[derive(Debug, Args)]
pub struct ImportCsvArgs {
    /// The CSV file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Directory the spec file is written to (created if needed), named after FILE.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Realm for hashing passwords [default: asterisk].
    #[arg(long, value_name = "REALM", default_value = secret::DEFAULT_REALM)]
    pub realm: String,
    /// Output format of the problems.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Print the extensions the spec files declare as our CSV (never a
    /// password or a hash; add a password or md5Cred column to import it).
    Csv(ExportCsvArgs),
}

#[derive(Debug, Args)]
pub struct ExportCsvArgs {
    /// A spec file or directory [default: the spec directory].
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportPjsipArgs {
    /// pjsip.conf files (each becomes one spec file named after it).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Directory the spec files are written to (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Realm for hashing passwords when neither the auth nor the global section sets one [default: asterisk].
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// Asterisk's configuration directory, where relative includes are found [default: each file's directory].
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Spec files or directories [default: the spec directory].
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Treat warnings (such as a plain-text password) as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// A spec file or directory [default: the spec directory].
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Write to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    /// For a pull-request comment.
    Markdown,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// Exit 2 when changes are pending, 0 when there are none, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Let this run delete more than the prune guard allows.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Wait up to this many seconds for Asterisk to answer AMI and finish
    /// booting before planning (as right after `systemctl restart
    /// asterisk`); 0 does not wait.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait_for_asterisk: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the nodes as JSON (name, reachable, version, registrations, error).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HashPasswordArgs {
    /// The extension number (the SIP username).
    pub extension: String,
    /// The password; `-` or absent: read one line from standard input.
    pub password: Option<String>,
    /// The digest realm (Asterisk's default_realm).
    #[arg(long, default_value = secret::DEFAULT_REALM)]
    pub realm: String,
}

/// Crates whose trace-level logs carry request headers verbatim: the
/// WebSocket handshake to ARI (tokio-tungstenite, tungstenite) logs its
/// `Authorization` header (base64 of user:password), and hyper/reqwest
/// their connections. They are held at `debug` whatever the filter says.
const NEVER_TRACE: &[&str] = &["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "reqwest", "h2"];

/// Installs the process's log subscriber as text lines; see [`init_logging_as`].
pub fn init_logging<W>(filter: &str, writer: W) -> Result<(), String>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    init_logging_as(LogFormat::Text, filter, writer)
}

/// Installs the process's log subscriber, as the binary does: `filter` in
/// `EnvFilter` syntax (`ASTERISK_GITOPS_LOG`), the `log` crate bridged in
/// (libraries that log through it, such as tungstenite, are captured), and
/// [`NEVER_TRACE`] capped at `debug` so no secret reaches a log at any
/// level. `Text` is coloured only when standard error is a terminal (not a
/// file, a pipe or journald); `Json` writes one object a line, with
/// `level` and `message` at the top, and is never coloured.
pub fn init_logging_as<W>(format: LogFormat, filter: &str, writer: W) -> Result<(), String>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let (mut env_filter, bad_filter) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e.to_string())),
    };
    if let (Some(e), LogFormat::Text) = (&bad_filter, format) {
        eprintln!("warning: ASTERISK_GITOPS_LOG: {e}; logging at info");
    }
    for target in NEVER_TRACE {
        if let Ok(d) = format!("{target}=debug").parse() {
            env_filter = env_filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    }
    .map_err(|e| e.to_string())?;
    if let (Some(e), LogFormat::Json) = (bad_filter, format) {
        // A plain line would break the one-object-a-line stream.
        tracing::warn!(error = %e, "ASTERISK_GITOPS_LOG cannot be read; logging at info");
    }
    Ok(())
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("ASTERISK_GITOPS_LOG").unwrap_or_else(|_| "info".into());
    let _ = init_logging_as(cli.global.log_format, &filter, std::io::stderr);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import_pjsip(args: ImportPjsipArgs) -> anyhow::Result<ExitCode> {
    use crate::import::pjsip;
    let opts = pjsip::ImportOptions { realm: args.realm, config_dir: args.config_dir };
    let out = match pjsip::import(&args.paths, &opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let written = pjsip::write(&out, &args.out)?;
    let mut stdout = std::io::stdout().lock();
    for (path, f) in written.iter().zip(&out.files) {
        writeln!(stdout, "wrote {} ({} extensions from {})", path.display(), f.spec.extensions.len(), f.source)?;
    }
    if !out.skipped.is_empty() {
        writeln!(stdout, "left alone ({}):", out.skipped.len())?;
        for s in &out.skipped {
            writeln!(stdout, "  {}: {}: {}", s.at, s.what, s.reason)?;
        }
    }
    writeln!(stdout, "{} extensions imported, {} sections left alone", out.extensions(), out.skipped.len())?;
    Ok(ExitCode::SUCCESS)
}

fn import_csv(args: ImportCsvArgs) -> anyhow::Result<ExitCode> {
    use crate::import::csv;
    let shown = args.file.display().to_string();
    let text = match std::fs::read(&args.file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("error: cannot read {shown}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let parsed = match csv::entries(&shown, &text, &args.realm) {
        Ok(p) => p,
        Err(diags) => {
            print!("{}", diag::format_all(&diags, args.format, 0));
            eprintln!("{} problems; nothing was written", diags.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    let stem = args.file.file_stem().and_then(|s| s.to_str()).unwrap_or("import");
    let path = args.out.join(format!("{stem}.yaml"));
    if path.exists() {
        eprintln!("error: {} exists; nothing was written", path.display());
        return Ok(ExitCode::FAILURE);
    }
    let yaml = csv::to_yaml(&parsed.entries, args.file.file_name().and_then(|n| n.to_str()).unwrap_or("a CSV file"))
        .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.out)?;
    crate::asterisk::managed::write_atomic(&path, yaml.as_bytes())?;
    let kind = match parsed.kind {
        csv::Kind::Ours => "asterisk-gitops CSV",
        csv::Kind::BulkHandler => "FreePBX Bulk Handler export",
    };
    println!("wrote {} ({} extensions from a {kind})", path.display(), parsed.entries.len());
    if !parsed.ignored.is_empty() {
        println!("columns not carried: {}", parsed.ignored.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn export_csv(global: &GlobalArgs, args: ExportCsvArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let path = args.path.unwrap_or_else(|| settings.spec_dir.clone());
    let options = LoadOptions { display_base: Some(path.clone()), secrets: Some(settings.secrets.clone()) };
    let loaded = spec::load_paths(std::slice::from_ref(&path), &options);
    if loaded.has_errors() {
        print!("{}", diag::format_all(&loaded.diagnostics, Format::Text, loaded.set.extensions.len()));
        return Ok(ExitCode::FAILURE);
    }
    let extensions: Vec<_> = loaded.set.extensions.iter().map(|e| (**e).clone()).collect();
    let text = crate::import::csv::export(&extensions);
    match args.output {
        Some(out) => crate::asterisk::managed::write_atomic(&out, text.as_bytes())?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => validate(&cli.global, args),
        Command::Render(args) => render(&cli.global, args),
        Command::Schema => {
            print!("{}", crate::core::schema::spec_schema_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword(args) => hash_password(args),
        Command::HashToken => hash_token(),
        Command::Import(ImportCommand::Pjsip(args)) => import_pjsip(args),
        Command::Import(ImportCommand::Csv(args)) => import_csv(args),
        Command::Export(ExportCommand::Csv(args)) => export_csv(&cli.global, args),
        Command::Plan(args) => runtime()?.block_on(plan(&cli.global, args)),
        Command::Apply(args) => runtime()?.block_on(apply(&cli.global, args)),
        Command::Serve => {
            let settings = cli.global.settings()?;
            runtime()?.block_on(crate::app::serve(settings, crate::app::shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => runtime()?.block_on(status(&cli.global, args)),
        Command::Realtime(RealtimeCommand::Init) => runtime()?.block_on(realtime_init(&cli.global)),
    }
}

/// `realtime init`: the realtime target's tables, created where missing.
async fn realtime_init(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let file = match &global.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = config::Overrides { apply_target: Some("realtime".into()), ..global.overrides.clone() };
    let settings = Settings::resolve(flags, file, &config::process_env)?;
    let Some(url) = &settings.realtime_database_url else { anyhow::bail!("no realtime database URL") };
    let target = crate::asterisk::realtime::store::Store::lazy(url)?;
    target.init().await?;
    target.schema().await?;
    println!(
        "the realtime tables (ps_endpoints, ps_auths, ps_aors) and the inventory ({}) are in {}",
        crate::asterisk::realtime::INVENTORY,
        secret::redact_url(url.expose())
    );
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Loads the specs; prints their errors and returns None when there are any.
fn load_or_report(settings: &Settings) -> Option<crate::reconcile::Desired> {
    let desired = crate::reconcile::source::load_dir_with(&settings.spec_dir, &settings.secrets);
    if desired.diagnostics.iter().any(|d| d.is_error()) {
        let errors: Vec<_> = desired.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        eprint!("{}", diag::format_all(&errors, Format::Text, 0));
        eprintln!("error: the specs have errors; nothing was planned");
        return None;
    }
    Some(desired)
}

async fn plan(global: &GlobalArgs, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let Some(desired) = load_or_report(&settings) else { return Ok(ExitCode::FAILURE) };
    let db = crate::app::connect(&settings).await?;
    let reconciler = crate::app::reconciler(&settings, db)?;
    let (p, _) = reconciler.plan(&desired).await.map_err(|e| anyhow::anyhow!(e))?;
    let out = match args.format {
        PlanFormat::Text => crate::core::plan::to_text(&p),
        PlanFormat::Json => format!("{}\n", serde_json::to_string_pretty(&p)?),
        PlanFormat::Markdown => crate::core::plan::to_markdown(&p),
    };
    std::io::stdout().write_all(out.as_bytes())?;
    let pending = p.has_changes() || (settings.reconcile.self_heal && p.has_healable_drift());
    Ok(if args.detailed_exitcode && pending { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

async fn apply(global: &GlobalArgs, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut settings = global.settings()?;
    if args.allow_mass_delete {
        settings.reconcile.allow_mass_delete = true;
    }
    let Some(desired) = load_or_report(&settings) else { return Ok(ExitCode::FAILURE) };
    let db = crate::app::connect(&settings).await?;
    let wait = std::time::Duration::from_secs(args.wait_for_asterisk);
    let mut reconciler = crate::app::reconciler(&settings, db)?;
    reconciler.asterisk = reconciler.asterisk.take().map(|a| a.with_boot_wait(wait));
    if let Some(a) = &reconciler.asterisk
        && !wait.is_zero()
        && let Err(e) = a.wait_fully_booted(wait, true).await
    {
        eprintln!("error: Asterisk is not ready (waited up to {}s, --wait-for-asterisk): {e}", wait.as_secs());
        return Ok(ExitCode::FAILURE);
    }
    crate::app::hand_over(&settings, &reconciler).await;
    let (p, _) = reconciler.plan(&desired).await.map_err(|e| anyhow::anyhow!(e))?;
    print!("{}", crate::core::plan::to_text(&p));
    // With `nodes:` the plan is the first node's; the others are applied after it.
    let fleet = settings.nodes.len() > 1;
    if !(fleet || p.has_changes() || (settings.reconcile.self_heal && p.has_healable_drift())) {
        println!("Nothing to do.");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            eprintln!("error: not applying without confirmation: run with --yes");
            return Ok(ExitCode::from(2));
        }
        eprint!("Apply these changes? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Not applied.");
            return Ok(ExitCode::FAILURE);
        }
    }
    drop(p); // the run plans again; two 100k plans at once would double the peak memory
    let for_followers = fleet.then(|| desired.clone());
    let report = reconciler.run(crate::reconcile::Trigger::Cli, desired).await;
    let r = &report.record;
    println!(
        "{}: {}{}",
        r.outcome.as_str(),
        r.plan.as_ref().map(crate::core::plan::summary).unwrap_or_default(),
        r.error.as_deref().map(|e| format!("\nerror: {e}")).unwrap_or_default()
    );
    // The other nodes in turn (the canary rule, `reconcile::fleet`); this
    // process has no record of what they hold, so each gets everything.
    let mut every_node = true;
    if let Some(desired) = for_followers {
        use crate::reconcile::AsteriskControl as _;
        use crate::reconcile::fleet::Followers as _;
        let fleet = crate::app::fleet(&settings, &reconciler, Default::default())?;
        crate::app::hand_over_followers(&settings, &fleet).await;
        let lead_reachable = match &reconciler.asterisk {
            Some(a) if r.outcome.is_failure() => a.ping().await.is_ok(),
            _ => true,
        };
        fleet.follow(&crate::reconcile::Trigger::Cli, &desired, &report, lead_reachable).await;
        let applies = fleet.applies.read().map(|a| a.clone()).unwrap_or_default();
        for node in &settings.nodes {
            let Some(a) = applies.get(&node.name) else { continue };
            every_node &= matches!(a.outcome.as_str(), "applied" | "noop");
            println!(
                "node {}: {}{}",
                node.name,
                a.outcome,
                a.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
        for f in &fleet.followers {
            if let Some(a) = &f.reconciler.asterisk {
                a.close().await;
            }
        }
    }
    if let Some(a) = &reconciler.asterisk {
        a.close().await;
    }
    Ok(match r.outcome {
        crate::reconcile::Outcome::Applied | crate::reconcile::Outcome::NoOp if every_node => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// One node as `status` reports it.
#[derive(serde::Serialize)]
struct NodeStatus {
    name: String,
    addr: String,
    reachable: bool,
    version: Option<String>,
    /// Endpoints with a live contact.
    registrations: Option<usize>,
    contacts: Option<usize>,
    error: Option<String>,
}

async fn node_status(name: &str, asterisk: &crate::asterisk::Asterisk, wait: std::time::Duration) -> NodeStatus {
    let ask = async {
        let version = asterisk.version().await?;
        let contacts = asterisk.contacts().await?;
        Ok::<_, crate::asterisk::AmiError>((version, contacts))
    };
    let (reachable, version, registrations, contacts, error) = match tokio::time::timeout(wait, ask).await {
        Ok(Ok((v, c))) => {
            let alive: std::collections::BTreeSet<&str> =
                c.iter().filter(|c| c.alive()).map(|c| c.endpoint.as_str()).collect();
            (true, Some(v.asterisk_version), Some(alive.len()), Some(c.len()), None)
        }
        Ok(Err(e)) => (false, None, None, None, Some(e.to_string())),
        Err(_) => (false, None, None, None, Some(format!("no answer within {} s", wait.as_secs_f64()))),
    };
    NodeStatus {
        name: name.to_string(),
        addr: asterisk.addr().to_string(),
        reachable,
        version,
        registrations,
        contacts,
        error,
    }
}

async fn status(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    if settings.nodes.is_empty() {
        eprintln!("error: no Asterisk configured: set --ami-addr, --ami-user and ASTERISK_GITOPS_AMI_SECRET");
        return Ok(ExitCode::from(2));
    }
    if settings.nodes_configured || args.json {
        // Every node at once, each bounded: one that does not answer holds no other back.
        let nodes: Vec<_> = settings.nodes.iter().map(|n| (n, crate::app::node_asterisk(&n.ami))).collect();
        let asks = nodes.iter().map(|(n, a)| node_status(&n.name, a, n.ami.timeout * 2));
        let report = futures_util::future::join_all(asks).await;
        for (_, a) in &nodes {
            a.close().await;
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": report }))?);
        } else {
            println!("{:<16} {:<24} {:<10} {:<12} {:<14} ERROR", "NODE", "AMI", "REACHABLE", "VERSION", "REGISTERED");
            for n in &report {
                println!(
                    "{:<16} {:<24} {:<10} {:<12} {:<14} {}",
                    n.name,
                    n.addr,
                    if n.reachable { "yes" } else { "no" },
                    n.version.as_deref().unwrap_or("-"),
                    n.registrations.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    n.error.as_deref().unwrap_or("")
                );
            }
        }
        return Ok(if report.iter().all(|n| n.reachable) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let Some(asterisk) = crate::app::asterisk(&settings) else {
        eprintln!("error: no Asterisk configured: set --ami-addr, --ami-user and ASTERISK_GITOPS_AMI_SECRET");
        return Ok(ExitCode::from(2));
    };
    let version = asterisk.version().await?;
    let endpoints = asterisk.endpoints().await?;
    let contacts = asterisk.contacts().await?;
    println!(
        "Asterisk {} at {} (up since {}, last reload {})",
        version.asterisk_version,
        asterisk.addr(),
        version.startup,
        version.last_reload
    );
    println!("{} endpoints, {} registered contacts", endpoints.len(), contacts.len());
    println!("{:<12} {:<16} {:<14} {:<40} {:<24} RTT", "ENDPOINT", "TRANSPORT", "STATE", "CONTACT", "USER AGENT");
    for e in &endpoints {
        let mine: Vec<_> = contacts.iter().filter(|c| c.endpoint == e.name).collect();
        if mine.is_empty() {
            println!("{:<12} {:<16} {:<14} {:<40} {:<24} -", e.name, e.transport, e.device_state, "-", "-");
        }
        for c in mine {
            let rtt =
                c.roundtrip_usec.map(|u| format!("{:.1} ms", u as f64 / 1000.0)).unwrap_or_else(|| c.status.clone());
            println!(
                "{:<12} {:<16} {:<14} {:<40} {:<24} {rtt}",
                e.name, e.transport, e.device_state, c.uri, c.user_agent
            );
        }
    }
    asterisk.close().await;
    Ok(ExitCode::SUCCESS)
}

fn validate(global: &GlobalArgs, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let paths = if args.paths.is_empty() { vec![settings.spec_dir.clone()] } else { args.paths };
    let options = LoadOptions { secrets: Some(settings.secret_policy_for(&paths)), ..Default::default() };
    let loaded = spec::load_paths(&paths, &options);
    let mut diagnostics = loaded.diagnostics;
    if loaded.files.is_empty() && diagnostics.is_empty() {
        for p in &paths {
            diagnostics.push(diag::Diagnostic::warning(
                "no-spec-files",
                diag::Location { file: p.display().to_string(), line: 1, column: 1 },
                "",
                "no *.yaml or *.yml files found here",
            ));
        }
    }
    // The template too: every option name it writes must be one Asterisk knows.
    let (template_problems, _) = crate::core::render::check_templates(
        settings.templates.as_deref(),
        &crate::core::catalogue::Catalogue::asterisk22(),
    );
    diagnostics.extend(template_problems);
    let failed = diagnostics.iter().any(|d| d.is_error() || args.strict);
    let out = diag::format_all(&diagnostics, args.format, loaded.set.extensions.len());
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn render(global: &GlobalArgs, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let path = args.path.unwrap_or_else(|| settings.spec_dir.clone());
    let paths = std::slice::from_ref(&path);
    let options = LoadOptions { secrets: Some(settings.secret_policy_for(paths)), ..Default::default() };
    let loaded = spec::load_paths(paths, &options);
    if loaded.has_errors() {
        let errors: Vec<_> = loaded.diagnostics.into_iter().filter(|d| d.is_error()).collect();
        eprint!("{}", diag::format_all(&errors, Format::Text, 0));
        eprintln!("error: the specs have errors; nothing was rendered");
        return Ok(ExitCode::FAILURE);
    }
    let renderer = Renderer::new(settings.templates.as_deref())?;
    let info = SourceInfo { source: path.display().to_string(), revision: None };
    let text = renderer.render(&loaded.set, &info, &ProcessSecrets)?;
    match args.output {
        None => std::io::stdout().write_all(text.as_bytes())?,
        Some(file) => crate::asterisk::managed::write_atomic(&file, text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn hash_token() -> anyhow::Result<ExitCode> {
    use sha2::Digest;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let token = line.trim();
    if token.len() < 16 {
        eprintln!("error: a token needs at least 16 characters (use a long random one: openssl rand -hex 32)");
        return Ok(ExitCode::from(2));
    }
    println!("{}", hex::encode(sha2::Sha256::digest(token.as_bytes())));
    Ok(ExitCode::SUCCESS)
}

fn hash_password(args: HashPasswordArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = check::extension_number(&args.extension) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let password = match args.password.as_deref() {
        Some(p) if p != "-" => p.to_string(),
        _ => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.is_empty() {
        eprintln!("error: the password is empty");
        return Ok(ExitCode::from(2));
    }
    println!("{}", secret::md5_cred(&args.extension, &args.realm, &password));
    Ok(ExitCode::SUCCESS)
}
