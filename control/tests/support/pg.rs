//! A throwaway PostgreSQL cluster for tests: created in a temporary directory, reachable by
//! Unix socket only (no TCP), stopped and removed on drop, so a test never touches a system
//! instance. Needs the Debian `postgresql` package and root (the cluster runs as `postgres`).
//! Shared by the tests that need PostgreSQL (`mod support;` in each).

#![allow(dead_code)]

use std::{path::PathBuf, process::Command};

/// Under `CI` a missing prerequisite is a failure; elsewhere the test skips, loudly.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why} (CI must provide it: scripts/setup installs postgresql)");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED {test}: {why} ***\n"
    );
}

/// The newest installed PostgreSQL's bin directory.
pub fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// Starts a cluster in `rtpedge-<tag>-<pid>` under the temporary directory, on a port in
    /// `port_base .. port_base + 10000` (tests running at once use different bases and tags).
    pub fn start(bin: PathBuf, tag: &str, port_base: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("rtpedge-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = port_base + (std::process::id() % 10_000) as u16;
        let as_pg = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        let initdb = bin.join("initdb");
        as_pg(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let pg_ctl = bin.join("pg_ctl");
        let opts = format!("-p {port} -k {} -c listen_addresses=''", dir.display());
        as_pg(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-l",
            dir.join("log").to_str().unwrap(),
            "start",
        ]);
        Cluster { dir, bin, port }
    }

    /// A connection URL (Unix socket).
    pub fn url(&self) -> String {
        format!(
            "postgresql:///postgres?host={}&port={}&user=postgres",
            self.dir.display(),
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
