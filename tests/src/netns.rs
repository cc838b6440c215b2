//! Named network namespaces and running commands in them.

use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

use crate::cleanup::{self, Resource};

/// Runs a command to completion; fails with its command line, exit status
/// and stderr unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion, whatever its exit status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", describe(cmd)))
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A network namespace, deleted on drop (with every interface in it, which
/// also removes the peers of its veth pairs).
#[derive(Debug)]
pub struct Netns {
    name: String,
    cleanup_id: u64,
}

impl Netns {
    /// Creates `name`; a leftover of the same name from a crashed run is
    /// deleted first.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            cleanup::delete_netns(name);
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        let cleanup_id = cleanup::register(Resource::Netns(name.to_string()));
        let ns = Netns {
            name: name.to_string(),
            cleanup_id,
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0]` with the rest as arguments inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("exec needs a program")?;
        run(self.command(program).args(rest))
    }

    /// `ip -n NS ARGS`, with `args` split at whitespace (`"link set lo up"`).
    pub fn ip(&self, args: &str) -> anyhow::Result<()> {
        run(Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args.split_whitespace()))
        .map(drop)
    }

    /// Sets sysctls (`key=value`) inside the namespace, through /proc/sys
    /// (the `sysctl` program is not on every minimal system).
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        let mut script = String::from("set -e");
        for setting in settings {
            let (key, value) = setting
                .split_once('=')
                .with_context(|| format!("{setting:?} is not key=value"))?;
            script.push_str(&format!("; echo {value} > /proc/sys/{}", key.replace('.', "/")));
        }
        run(self.command("sh").arg("-c").arg(script)).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cleanup::delete_netns(&self.name);
        cleanup::forget(self.cleanup_id);
    }
}
