//! Writes a generated estate of N extensions into DIR, for benchmarks and demos:
//!
//!     cargo run --release --example gen_estate -- /tmp/estate-10k 10000
//!     cargo run --release -- validate /tmp/estate-10k

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<usize>().ok())) else {
        eprintln!("usage: gen_estate DIR N");
        return std::process::ExitCode::from(2);
    };
    match asterisk_gitops::estate::write(std::path::Path::new(dir), n) {
        Ok(()) => {
            println!("wrote {n} extensions under {dir}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
