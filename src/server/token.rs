//! The admin API's bearer token: given (`TEAL_ADMIN_TOKEN` / `--admin-token`, at least 16 characters), read from
//! a token file, or generated once into `<state-dir>/admin.token`. A token file is a secret on disk: it must be a
//! regular file (never a symlink) readable by its owner only, or teal refuses to start; a generated one is
//! created exclusively with mode 0600 and kept across restarts. The viewer token, if any, is given.

#![deny(clippy::indexing_slicing)]

use anyhow::{bail, Context as _};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

/// Shortest token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

fn checked(token: &str, from: &str) -> anyhow::Result<String> {
    let t = token.trim();
    if t.chars().count() < MIN_TOKEN_CHARS {
        bail!("the token from {from} is shorter than {MIN_TOKEN_CHARS} characters; use a long random one");
    }
    Ok(t.to_string())
}

/// Reads a token file: a regular file (not a symlink), not readable or writable by group or others.
pub fn read_private(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.file_type().is_symlink() || !meta.is_file() {
        bail!("{} is not a regular file (a symlink or other file is refused for the admin token)", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} has permissions {mode:03o}; the admin token file must be readable by its owner only \
                 (chmod 600 {})",
                path.display(),
                path.display()
            );
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        Read::by_ref(&mut f)
            .take(4096)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        checked(&text, &path.display().to_string())
    }
    #[cfg(not(unix))]
    {
        let text = std::fs::read_to_string(path)?;
        checked(&text, &path.display().to_string())
    }
}

/// Creates `path` exclusively (never through an existing file or symlink) with owner-only permissions.
fn create_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// The admin token for this server (see the module docs). Without a given token or file, the admin API must
/// listen on a loopback address.
pub fn admin_token(
    given: Option<&str>,
    token_file: Option<&Path>,
    state_dir: &Path,
    admin_addr: SocketAddr,
) -> anyhow::Result<String> {
    if let Some(t) = given {
        return checked(t, "TEAL_ADMIN_TOKEN / --admin-token");
    }
    if let Some(f) = token_file {
        return read_private(f);
    }
    if !admin_addr.ip().is_loopback() {
        bail!(
            "refusing to serve the admin API on {admin_addr} without a token: set TEAL_ADMIN_TOKEN or \
             --admin-token-file, or keep the admin API on a loopback address"
        );
    }
    let path = state_dir.join("admin.token");
    if std::fs::symlink_metadata(&path).is_ok() {
        return read_private(&path);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    create_private(&path, &token).with_context(|| format!("writing the admin token to {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

/// The viewer token (`--admin-viewer-token`), checked like the admin token and refused when it is the admin
/// token itself (a viewer would then be an operator).
pub fn viewer_token(given: Option<&str>, file: Option<&Path>, admin: &str) -> anyhow::Result<Option<String>> {
    let t = match (given, file) {
        (Some(t), _) => checked(t, "TEAL_ADMIN_VIEWER_TOKEN / --admin-viewer-token")?,
        (None, Some(f)) => read_private(f)?,
        (None, None) => return Ok(None),
    };
    if t == admin {
        bail!("the viewer token is the admin token; give the viewer a token of its own");
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewer_token_is_long_and_its_own() {
        let admin = "0123456789abcdef";
        assert_eq!(viewer_token(None, None, admin).unwrap(), None);
        assert!(viewer_token(Some("short"), None, admin).is_err());
        assert!(viewer_token(Some(admin), None, admin).is_err());
        let t = viewer_token(Some(" fedcba9876543210 "), None, admin).unwrap();
        assert_eq!(t.as_deref(), Some("fedcba9876543210"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("viewer.token");
        create_private(&f, "viewer-from-a-file-0123").unwrap();
        assert_eq!(viewer_token(None, Some(&f), admin).unwrap().as_deref(), Some("viewer-from-a-file-0123"));
    }
    use std::os::unix::fs::PermissionsExt;

    fn loopback() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn tokens_are_long_files_private_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(admin_token(Some("short"), None, dir.path(), loopback()).is_err());
        assert_eq!(admin_token(Some("0123456789abcdef"), None, dir.path(), loopback()).unwrap(), "0123456789abcdef");
        // Generated once, 0600, then reused.
        let a = admin_token(None, None, dir.path(), loopback()).unwrap();
        let path = dir.path().join("admin.token");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(admin_token(None, None, dir.path(), loopback()).unwrap(), a);
        // Looser permissions are refused with the fix in the message.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = admin_token(None, None, dir.path(), loopback()).unwrap_err().to_string();
        assert!(e.contains("644") && e.contains("chmod 600"), "{e}");
        // A symlink where the token would go is refused, not followed or overwritten.
        let other = tempfile::tempdir().unwrap();
        let target = other.path().join("victim");
        std::fs::write(&target, "x").unwrap();
        std::os::unix::fs::symlink(&target, other.path().join("admin.token")).unwrap();
        assert!(admin_token(None, None, other.path(), loopback()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
        // A public admin address needs an explicit token.
        assert!(admin_token(None, None, dir.path(), "0.0.0.0:1".parse().unwrap()).is_err());
    }
}
