//! Where hostwall keeps its kernel objects on bpffs, and which version of
//! that layout they follow.
//!
//! ```text
//! <bpffs>/v<N>/maps/<MAP>                     every map
//! <bpffs>/v<N>/links/if<ifindex>_<dir>        tc links (tcx kernels)
//! <bpffs>/v<N>/links/uplink<ifindex>          the uplink's xdp link
//! <bpffs>/v<N>/progs/<PROGRAM>                the programs
//! <bpffs>/v<N>/growth/<MAP>                   larger maps while they are
//!                                             swapped in
//! ```
//!
//! `N` changes whenever a map's type, key or value changes. An agent that
//! finds an older layout builds its own beside it, carries tracked flows
//! over where their format allows, swaps its programs into the old links,
//! and removes the old layout.

use std::path::{Path, PathBuf};

/// The layout this build writes.
pub const LAYOUT_VERSION: u32 = 7;

/// Overrides the layout version; used by the upgrade test to play a newer
/// agent.
pub const LAYOUT_VERSION_ENV: &str = "HOSTWALL_LAYOUT_VERSION";

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
    version: u32,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let version = std::env::var(LAYOUT_VERSION_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LAYOUT_VERSION);
        Layout {
            root: root.to_path_buf(),
            version,
        }
    }

    pub fn at_version(root: &Path, version: u32) -> Layout {
        Layout {
            root: root.to_path_buf(),
            version,
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(format!("v{}", self.version))
    }

    pub fn maps(&self) -> PathBuf {
        self.dir().join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.dir().join("links")
    }

    /// Where maps a growth creates are pinned until they replace the
    /// pinned ones.
    pub fn growth(&self) -> PathBuf {
        self.dir().join("growth")
    }

    pub fn progs(&self) -> PathBuf {
        self.dir().join("progs")
    }

    /// Whether this layout already holds pinned maps (an agent ran here).
    pub fn exists(&self) -> bool {
        self.maps().join("HW_ACTIVE").exists()
    }

    /// Every layout found under the root, newest first.
    pub fn all(root: &Path) -> Vec<Layout> {
        let mut found: Vec<Layout> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let version = name.strip_prefix('v')?.parse().ok()?;
                Some(Layout::at_version(root, version))
            })
            .collect();
        found.sort_by_key(|l| std::cmp::Reverse(l.version));
        found
    }

    /// Older layouts than this one that still exist.
    pub fn older(&self) -> Vec<Layout> {
        Layout::all(&self.root)
            .into_iter()
            .filter(|l| l.version < self.version)
            .collect()
    }

    /// Removes this layout's pins (maps, programs and links). Kernel
    /// objects that nothing else holds go away with them.
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
