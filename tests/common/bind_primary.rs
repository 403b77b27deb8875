//! BIND 9 (`named`) as the reference primary of a zone that takes signed updates:
//! where RFC 2136 leaves room, svcdns should answer UPDATE as BIND does. It runs on a
//! free loopback port in a temporary directory, and is killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{dig, eventually, free_port};

pub struct BindPrimary {
    child: Child,
    pub dns: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BindPrimary {
    /// `zone` served from an empty zone file (SOA, NS, the NS's A), taking updates
    /// signed with the hmac-sha256 key `key_name` (`secret` in base64) anywhere in it.
    pub fn start(zone: &str, key_name: &str, secret: &str) -> BindPrimary {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().display().to_string();
        let port = free_port();
        let config = format!(
            "options {{ directory \"{home}\"; pid-file \"{home}/named.pid\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; notify no; }};\n\
             key \"{key_name}\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};\n\
             zone \"{zone}\" {{ type primary; file \"{home}/zone.db\"; update-policy {{ grant {key_name} zonesub ANY; }}; }};\n"
        );
        std::fs::write(dir.path().join("named.conf"), config).expect("named.conf");
        let zone_file = format!(
            "$TTL 5\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 5\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
        );
        std::fs::write(dir.path().join("zone.db"), zone_file).expect("zone file");
        // -g: in the foreground, logging to stderr; it runs as the user running the tests.
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(dir.path().join("named.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("named must be installed (apt-get install bind9; scripts/test does)");
        let dns = SocketAddr::from(([127, 0, 0, 1], port));
        let primary = BindPrimary {
            child,
            dns,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(10), || {
            dig(dns, &["+short", zone, "SOA"]).contains("hostmaster")
        });
        assert!(up, "named did not start serving {zone} on {dns}");
        primary
    }
}

impl Drop for BindPrimary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
