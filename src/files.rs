//! Files that hold customer data or secrets (the SQLite database with the generated
//! unsubscribe key, the outbox's `.eml` files): created for the owner only, whatever the
//! umask. New folders are 0700 and new files 0600; the mode is set explicitly after
//! creation because the umask only ever removes bits.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents, each new one 0700. Folders that already exist
/// are left as they are (they may be shared, e.g. `/var/lib`).
pub fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => set_mode(d, 0o700)?,
            // Another process made it in the meantime: theirs, left alone.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path`, which must not exist yet, as an empty 0600 file.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Removes the group and other permission bits of an existing file. Returns the old
/// and new mode when it changed something, None when the file was already private.
pub fn make_private(path: &Path) -> io::Result<Option<(u32, u32)>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(None);
        }
        let private = mode & 0o700;
        set_mode(path, private)?;
        Ok(Some((mode, private)))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_dirs_and_files_are_owner_only_and_existing_ones_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = shared.join("a/b");
        create_private_dirs(&deep).unwrap();
        assert_eq!(mode(&shared), 0o755, "an existing folder is left alone");
        assert_eq!(mode(&shared.join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        create_private_dirs(&deep).unwrap();

        let f = deep.join("x.db");
        create_private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert!(
            create_private_file(&f).is_err(),
            "never reuses an existing file"
        );

        assert_eq!(make_private(&f).unwrap(), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(make_private(&f).unwrap(), Some((0o644, 0o600)));
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(make_private(&f).unwrap(), Some((0o444, 0o400)));
    }
}
