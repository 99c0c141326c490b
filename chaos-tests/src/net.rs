//! The network: one namespace per site, joined by a bridge that lives in a
//! hub namespace of its own, and one link from the hub to the test host.
//!
//! ```text
//!  root ns (test host)           kc<pid>-hub                 kc<pid>-a
//!  kc<pid> 198.18.X.1/24 ── uplink ─ br0 ─ pa ───────────── eth0 198.18.X.10/24
//!                                     ├─ pb ───────────── eth0 198.18.X.11  (kc<pid>-b)
//!                                     └─ pc ───────────── eth0 198.18.X.12  (kc<pid>-c)
//! ```
//!
//! Why a hub namespace rather than a bridge in the root namespace: bridged
//! frames pass the bridging namespace's iptables when `br_netfilter` is
//! loaded (it is here), so a root firewall with a FORWARD policy of DROP
//! would silently cut the sites off from each other; the hub's own tables
//! are empty. It also leaves a single interface and a single /24 route in
//! the root namespace, and deleting the namespaces removes every link.
//!
//! Names carry the test process's full pid so a later run can tell a
//! dead run's leftovers (swept at start) from a live concurrent run's. The
//! /24 is picked inside 198.18.0.0/15 (RFC 2544 benchmarking space) from
//! the pid, skipping any already in use. No namespace has a default route:
//! nothing leaves the /24.

use std::process::Command;

/// Runs a command; answers its stdout or a message with its stderr.
pub fn sh_ok(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to the processes `pids` with the
/// shell's builtin `kill` (`/bin/sh` is essential on Debian; procps, which
/// ships `/bin/kill`, is not).
pub fn signal(signal: &str, pids: &[String]) -> Result<String, String> {
    if pids.is_empty() {
        return Ok(String::new());
    }
    sh_ok(&["sh", "-c", &format!("kill -s {signal} {}", pids.join(" "))])
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    sh_ok(args).unwrap_or_else(|e| panic!("{e}"))
}

/// One site's namespace.
#[derive(Clone, Debug)]
pub struct SiteNet {
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// Its link's end in the hub namespace.
    hub_port: String,
}

/// The namespaces, links and addresses of one run.
pub struct Net {
    pub tag: String,
    pub hub: String,
    pub host_ip: String,
    pub sites: Vec<SiteNet>,
    root_link: String,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `kc<pid>` or `kc<pid>-…`: the pid of the run that made it.
fn run_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("kc")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let after = &rest[digits.len()..];
    if !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    digits.parse().ok()
}

/// Removes what runs that no longer exist left behind: their processes,
/// namespaces, root links and tmpfs mounts.
pub fn sweep_stale() {
    let me = std::process::id();
    let stale = |name: &str| run_pid(name).is_some_and(|p| p != me && !pid_alive(p));
    // Mounts first: a process in a stale namespace may hold them.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let namespaces = sh_ok(&["ip", "netns", "list"]).unwrap_or_default();
    for line in namespaces.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if !stale(ns) {
            continue;
        }
        if let Ok(pids) = sh_ok(&["ip", "netns", "pids", ns]) {
            let pids: Vec<String> = pids.split_whitespace().map(String::from).collect();
            let _ = signal("CONT", &pids);
            let _ = signal("KILL", &pids);
        }
        eprintln!("chaos: removing stale namespace {ns}");
        let _ = sh_ok(&["ip", "netns", "del", ns]);
    }
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(point), Some(fs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fs != "tmpfs" {
            continue;
        }
        let Some(pos) = point.find("kura-chaos-") else {
            continue;
        };
        let pid: String = point[pos + "kura-chaos-".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if pid.parse::<u32>().is_ok_and(|p| p != me && !pid_alive(p)) {
            eprintln!("chaos: unmounting stale tmpfs {point}");
            let _ = sh_ok(&["umount", "-l", point]);
        }
    }
    let links = sh_ok(&["ip", "-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if stale(name) {
            eprintln!("chaos: removing stale link {name}");
            let _ = sh_ok(&["ip", "link", "del", name]);
        }
    }
}

impl Net {
    /// Builds the namespaces for `sites` (after sweeping stale ones).
    pub fn create(sites: &[&str]) -> Net {
        sweep_stale();
        let pid = std::process::id();
        let tag = format!("kc{pid}");
        let in_use = format!(
            "{}\n{}",
            sh(&["ip", "-o", "-4", "addr", "show"]),
            sh(&["ip", "-4", "route", "show", "table", "all"])
        );
        let prefix = (0..512u32)
            .map(|k| {
                let idx = (pid + k) % 512;
                format!("198.{}.{}.", 18 + idx / 256, idx % 256)
            })
            .find(|p| !in_use.contains(p.as_str()))
            .expect("a free /24 in 198.18.0.0/15");
        let hub = format!("{tag}-hub");
        let mut net = Net {
            host_ip: format!("{prefix}1"),
            hub: hub.clone(),
            sites: Vec::new(),
            root_link: tag.clone(),
            tag: tag.clone(),
        };
        // From here on, Drop cleans up whatever was made.
        sh(&["ip", "netns", "add", &hub]);
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        sh(&[
            "ip", "link", "add", &tag, "type", "veth", "peer", "name", "uplink", "netns", &hub,
        ]);
        sh(&["ip", "-n", &hub, "link", "set", "uplink", "master", "br0"]);
        sh(&["ip", "-n", &hub, "link", "set", "uplink", "up"]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &tag,
        ]);
        sh(&["ip", "link", "set", &tag, "up"]);
        for (i, name) in sites.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let ip = format!("{prefix}{}", 10 + i);
            let hub_port = format!("p{name}");
            sh(&["ip", "netns", "add", &ns]);
            net.sites.push(SiteNet {
                name: name.to_string(),
                ns: ns.clone(),
                ip: ip.clone(),
                hub_port: hub_port.clone(),
            });
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip", "-n", &hub, "link", "add", &hub_port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            sh(&["ip", "-n", &hub, "link", "set", &hub_port, "master", "br0"]);
            sh(&["ip", "-n", &hub, "link", "set", &hub_port, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    pub fn site(&self, name: &str) -> &SiteNet {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name}"))
    }

    /// Cuts a site's link at the hub (the site sees its carrier go).
    pub fn link_down(&self, site: &str) {
        let port = self.site(site).hub_port.clone();
        sh(&["ip", "-n", &self.hub, "link", "set", &port, "down"]);
    }

    pub fn link_up(&self, site: &str) {
        let port = self.site(site).hub_port.clone();
        sh(&["ip", "-n", &self.hub, "link", "set", &port, "up"]);
    }

    /// The shell command an operator's script would run for
    /// [`Net::link_down`] (`up: false`) or [`Net::link_up`].
    pub fn link_command(&self, site: &str, up: bool) -> String {
        format!(
            "ip -n {} link set {} {}",
            self.hub,
            self.site(site).hub_port,
            if up { "up" } else { "down" }
        )
    }

    /// Drops traffic between `site` and the other sites inside the site's
    /// namespace (the test host stays reachable). `one_way`: only what the
    /// others send to it is dropped (its own packets still arrive there;
    /// the answers do not come back).
    pub fn isolate(&self, site: &str, one_way: bool) {
        let s = self.site(site).clone();
        for other in self.sites.iter().filter(|o| o.name != site) {
            sh(&[
                "ip", "netns", "exec", &s.ns, "iptables", "-A", "INPUT", "-s", &other.ip, "-j",
                "DROP",
            ]);
            if !one_way {
                sh(&[
                    "ip", "netns", "exec", &s.ns, "iptables", "-A", "OUTPUT", "-d", &other.ip,
                    "-j", "DROP",
                ]);
            }
        }
    }

    /// Removes every rule `isolate` added.
    pub fn unisolate(&self, site: &str) {
        let ns = self.site(site).ns.clone();
        for chain in ["INPUT", "OUTPUT"] {
            sh(&["ip", "netns", "exec", &ns, "iptables", "-F", chain]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for s in &self.sites {
            if let Ok(pids) = sh_ok(&["ip", "netns", "pids", &s.ns]) {
                let pids: Vec<String> = pids.split_whitespace().map(String::from).collect();
                let _ = signal("CONT", &pids);
                let _ = signal("KILL", &pids);
            }
            let _ = sh_ok(&["ip", "netns", "del", &s.ns]);
        }
        let _ = sh_ok(&["ip", "netns", "del", &self.hub]);
        // Gone with its peer; make sure.
        let _ = sh_ok(&["ip", "link", "del", &self.root_link]);
    }
}
