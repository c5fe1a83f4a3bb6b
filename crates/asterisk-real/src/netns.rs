//! A small network of Linux network namespaces for tests of phones behind
//! NAT, made by the test itself and removed when it ends:
//!
//! ```text
//!  root namespace            pbx (Asterisk)         nat (the router)            phone (the softphone)
//!  root_ip ─────── veth ─── pbx_ip
//!  (the test, the daemon)   198.18.128.1 ── veth ── 198.18.128.2 (public)
//!                                                   198.19.0.1 ──── veth ────── 198.19.0.2 (private)
//!                                                   masquerade out of the public side (nftables)
//! ```
//!
//! Asterisk binds `pbx_ip` (a /30 in 198.18.0.0/17 shared with the root
//! namespace, so the daemon reaches AMI and ARI there); the phone reaches it
//! through the NAT, whose public side masquerades the phone's private
//! address: Asterisk sees the phone's packets come from
//! [`NatNet::NAT_PUBLIC`], while the phone's Contact names its private
//! address, to which the pbx namespace has no route. Addresses are only from
//! 198.18.0.0/15 (reserved for benchmarks) and exist only inside these
//! namespaces and on the one root-side veth, which goes with them.
//!
//! Names are unique per process and test (`agnat-<pid>-<n>-pbx`, …); a test
//! process killed before it could clean up leaves namespaces named after a
//! dead pid (and the Asterisk and phone it started in them), which the next
//! [`NatNet::create`] removes (killing those processes by pid).
//!
//! It needs `ip` (iproute2), `nft` (nftables) and the right to make
//! namespaces (root, or CAP_NET_ADMIN + CAP_SYS_ADMIN): [`require`] turns
//! their absence into a loud SKIPPED, or a failure under `CI=true`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const PREFIX: &str = "agnat";
/// The pbx–nat link ("the internet" between the NAT and the PBX).
const PBX_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
/// The nat–phone link (the phone's LAN).
const NAT_PRIVATE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// iproute2's `ip` (`ip` from PATH when not found, so errors name it).
pub fn ip_binary() -> PathBuf {
    find("ip").unwrap_or_else(|| PathBuf::from("ip"))
}

/// A command run inside namespace `ns` (`ip netns exec ns program`).
pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(ip_binary());
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `ip args…`; Err carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new(ip_binary()).args(args), &format!("ip {}", args.join(" ")))
}

fn run(c: &mut Command, what: &str) -> Result<(), String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this machine can make the network, or why not.
pub fn available() -> Result<(), String> {
    if find("ip").is_none() {
        return Err("`ip` is not installed (Debian's iproute2)".into());
    }
    if find("nft").is_none() {
        return Err("`nft` is not installed (Debian's nftables)".into());
    }
    let probe = format!("{PREFIX}-{}-probe{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let nft = run(
        Command::new(ip_binary())
            .args(["netns", "exec", &probe])
            .arg(find("nft").unwrap_or_default())
            .args(["list", "ruleset"]),
        "nft list ruleset in a new namespace",
    );
    let _ = ip(&["netns", "del", &probe]);
    nft
}

/// True when the network can be made; otherwise a loud SKIPPED (false), or
/// a panic under `CI=true`.
pub fn require(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) if crate::in_ci() => panic!("{test}: network namespaces are required under CI=true: {why}"),
        Err(why) => {
            eprintln!("\n*** SKIPPED {test}: no network namespaces: {why} ***\n");
            false
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The three namespaces and their links; deleted when dropped (drop the
/// processes running in them first: declare the `NatNet` before them).
pub struct NatNet {
    /// Namespace names.
    pub pbx: String,
    pub nat: String,
    pub phone: String,
    /// The root namespace's end of the link to pbx (where the test's daemon
    /// and a root-side sipp come from).
    pub root_ip: Ipv4Addr,
    /// The pbx's address on that link: Asterisk binds it.
    pub pbx_ip: Ipv4Addr,
    /// The phone's private address.
    pub phone_ip: Ipv4Addr,
    root_dev: String,
    made: Vec<String>,
}

impl NatNet {
    /// The NAT's public address: where Asterisk sees the phone's packets
    /// come from.
    pub const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
    /// The phone's private address.
    pub const PHONE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

    /// Makes the namespaces, links, routes and the masquerade.
    pub fn create() -> Result<NatNet, String> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("{PREFIX}-{pid}-{n}");
        let (root_ip, pbx_ip) = root_link_addresses(pid, n)?;
        let mut net = NatNet {
            pbx: format!("{base}-pbx"),
            nat: format!("{base}-nat"),
            phone: format!("{base}-phone"),
            root_ip,
            pbx_ip,
            phone_ip: Self::PHONE,
            // At most 15 characters: "ag" + pid (up to 7 digits) + "n" + n.
            root_dev: format!("ag{pid}n{}", n % 1000),
            made: Vec::new(),
        };
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), String> {
        let (pbx, nat, phone) = (self.pbx.clone(), self.nat.clone(), self.phone.clone());
        for ns in [&pbx, &nat, &phone] {
            ip(&["netns", "add", ns])?;
            self.made.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // root ↔ pbx
        let root_dev = self.root_dev.clone();
        ip(&["link", "add", &root_dev, "type", "veth", "peer", "name", "root0", "netns", &pbx])?;
        ip(&["addr", "add", &format!("{}/30", self.root_ip), "dev", &root_dev])?;
        ip(&["link", "set", &root_dev, "up"])?;
        ip(&["-n", &pbx, "addr", "add", &format!("{}/30", self.pbx_ip), "dev", "root0"])?;
        ip(&["-n", &pbx, "link", "set", "root0", "up"])?;
        // pbx ↔ nat: the public side.
        ip(&["link", "add", "name", "pub0", "netns", &pbx, "type", "veth", "peer", "name", "pub0", "netns", &nat])?;
        ip(&["-n", &pbx, "addr", "add", &format!("{PBX_PUBLIC}/24"), "dev", "pub0"])?;
        ip(&["-n", &nat, "addr", "add", &format!("{}/24", Self::NAT_PUBLIC), "dev", "pub0"])?;
        // nat ↔ phone: the private side.
        ip(&["link", "add", "name", "priv0", "netns", &nat, "type", "veth", "peer", "name", "priv0", "netns", &phone])?;
        ip(&["-n", &nat, "addr", "add", &format!("{NAT_PRIVATE}/24"), "dev", "priv0"])?;
        ip(&["-n", &phone, "addr", "add", &format!("{}/24", self.phone_ip), "dev", "priv0"])?;
        for (ns, dev) in [(&pbx, "pub0"), (&nat, "pub0"), (&nat, "priv0"), (&phone, "priv0")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // Routes: the phone's default is the NAT; the NAT reaches Asterisk's
        // address through the pbx's public side. The pbx has no route to the
        // private network (as on the internet).
        ip(&["-n", &phone, "route", "add", "default", "via", &NAT_PRIVATE.to_string()])?;
        ip(&["-n", &nat, "route", "add", &format!("{}/32", self.pbx_ip), "via", &PBX_PUBLIC.to_string()])?;
        // The NAT: forwarding on, the private side masqueraded behind the public address.
        run(
            Command::new(ip_binary()).args([
                "netns",
                "exec",
                &nat,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ]),
            "ip_forward in the nat namespace",
        )?;
        let rules = "table ip nat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat;\n    oifname \"pub0\" masquerade\n  }\n}\n";
        let nft = find("nft").ok_or("`nft` is not installed (Debian's nftables)")?;
        let mut child = Command::new(ip_binary())
            .args(["netns", "exec", &nat])
            .arg(nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(rules.as_bytes()).map_err(|e| format!("nft: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft -f - in {nat}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    /// Where Asterisk runs in this network ([`crate::Options::netns`]).
    pub fn pbx_place(&self) -> crate::InNamespace {
        crate::InNamespace { name: self.pbx.clone(), ip: self.pbx_ip, client: self.root_ip }
    }
}

impl Drop for NatNet {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        // Gone with the pbx namespace, unless a process still holds it.
        let _ = Command::new(ip_binary())
            .args(["link", "del", &self.root_dev])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A /30 in 198.18.0.0/17 for the root–pbx link that no address in the root
/// namespace is in yet: (the root's end, the pbx's end).
fn root_link_addresses(pid: u32, n: usize) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let out = Command::new(ip_binary())
        .args(["-4", "-o", "addr", "show"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip addr show: {e}"))?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    const SUBNETS: u32 = 1 << 13; // 198.18.0.0/17 in /30s
    let start = (pid % 2048) * 4 + n as u32;
    for k in 0..SUBNETS {
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((start + k) % SUBNETS) * 4;
        let (root, pbx) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        if !used.contains(&format!(" {root}/")) && !used.contains(&format!(" {pbx}/")) {
            return Ok((root, pbx));
        }
    }
    Err("no free /30 left in 198.18.0.0/17 in the root namespace".into())
}

/// Deletes namespaces an earlier run of this harness left behind: named
/// after a process that no longer exists.
fn sweep_stale() {
    let Ok(out) = Command::new(ip_binary()).args(["netns", "list"]).stdin(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('-')) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Its processes (an Asterisk, a phone) outlived the test that
            // was killed: end them, by pid, before the namespace goes.
            if let Ok(pids) = Command::new(ip_binary()).args(["netns", "pids", name]).stdin(Stdio::null()).output() {
                for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    if p.parse::<u32>().is_ok() {
                        let _ = Command::new("sh")
                            .args(["-c", "kill -s KILL \"$0\"", p])
                            .stdin(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_link_addresses_are_a_slash_30_in_198_18_0_0_17() {
        let Ok((root, pbx)) = root_link_addresses(12345, 3) else { return };
        let (r, p) = (u32::from(root), u32::from(pbx));
        assert_eq!(p, r + 1);
        assert_eq!(r % 4, 1, "{root} is the first host of a /30");
        assert!(root.octets()[0] == 198 && root.octets()[1] == 18 && root.octets()[2] < 128, "{root}");
    }
}
