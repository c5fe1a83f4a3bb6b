//! Starts a real Asterisk exactly as the tests do and keeps it running until
//! Ctrl-C (or for SECONDS), printing its ports and directory:
//!
//!   cargo run -p asterisk-real --example asterisk -- [MANAGED_FILE] [SECONDS]
use asterisk_real::{Asterisk, Options, build};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let managed = match args.next() {
        Some(p) if p != "-" => std::fs::read_to_string(p)?,
        _ => String::new(),
    };
    let secs: Option<u64> = args.next().and_then(|s| s.parse().ok());
    let build = build()?;
    let ast = Asterisk::start(&build, Options { managed, ..Options::named("manual") }).await?;
    println!(
        "Asterisk running in {}\n  SIP udp {}\n  AMI {} (user {}, secret {})\n  ARI {} (user {}, password {})\n  CLI: LD_LIBRARY_PATH={}/lib {} -C {}/asterisk.conf -r",
        ast.dir().display(),
        ast.sip_addr(),
        ast.ami_addr(),
        asterisk_real::AMI_USER,
        ast.ami_secret,
        ast.ari_url(),
        asterisk_real::ARI_USER,
        ast.ari_password,
        build.prefix.display(),
        build.binary().display(),
        ast.etc().display()
    );
    match secs {
        Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    Ok(())
}
