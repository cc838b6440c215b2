//! The agent's own state, under `--state-dir`: with `--write-back none`,
//! the policy as changed through the API (`policy.yaml`) and the hash of
//! the control file it was changed from (`policy.base`). A restart
//! enforces it as long as the control file is still the one it was
//! changed from; once the control file changes, the file wins and the
//! state is dropped.

use std::path::{Path, PathBuf};

use tracing::warn;

fn policy_path(dir: &Path) -> PathBuf {
    dir.join("policy.yaml")
}

fn base_path(dir: &Path) -> PathBuf {
    dir.join("policy.base")
}

/// Saves `text`, changed from the control file whose bytes hash to
/// `base`; the policy first, so that a crash between the two writes
/// leaves a base that names no policy, or the old one.
pub fn save(dir: &Path, text: &str, base: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(base_path(dir));
    super::enforce::write_atomically(&policy_path(dir), text.as_bytes())?;
    super::enforce::write_atomically(&base_path(dir), base.as_bytes())
}

/// The saved policy's text, when it was changed from the control file
/// whose bytes hash to `file_hash`.
pub fn load(dir: &Path, file_hash: &str) -> Option<(PathBuf, Vec<u8>)> {
    let base = std::fs::read_to_string(base_path(dir)).ok()?;
    if base.trim() != file_hash {
        clear(dir);
        return None;
    }
    let path = policy_path(dir);
    let bytes = std::fs::read(&path).ok()?;
    Some((path, bytes))
}

/// Drops the saved policy: the control file is what is enforced.
pub fn clear(dir: &Path) {
    for path in [base_path(dir), policy_path(dir)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(path = %path.display(), error = %e, "removing the agent's saved policy failed")
            }
            _ => {}
        }
    }
}
