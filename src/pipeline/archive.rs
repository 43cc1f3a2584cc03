//! Packs a source tree into a deterministic gzipped tarball: sorted entries,
//! zero mtimes, root ownership, normalised modes. The same tree always gives
//! the same bytes, so the archive's digest names it in the bucket and an
//! unchanged source is never uploaded twice.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// A packed source.
#[derive(Debug, Clone)]
pub struct SourceArchive {
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    pub files: usize,
}

/// Directories never sent to Cloud Build.
const ALWAYS_SKIPPED: &[&str] = &[".git", ".hg", ".svn"];

pub fn pack(root: &Path) -> io::Result<SourceArchive> {
    let mut files = Vec::new();
    collect(root, Path::new(""), &mut files)?;
    files.sort();

    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in &files {
        let full = root.join(rel);
        let meta = fs::symlink_metadata(&full)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&full)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            tar.append_link(&mut header, rel, &target)?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            header.set_mode(if is_executable(&meta) { 0o755 } else { 0o644 });
            let f = fs::File::open(&full)?;
            tar.append_data(&mut header, rel, f)?;
        }
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    let bytes = gz.finish()?;
    let sha256 = hex(&Sha256::digest(&bytes));
    Ok(SourceArchive {
        bytes,
        sha256,
        files: files.len(),
    })
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if ALWAYS_SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let path = rel.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect(root, &path, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(path);
        }
        // Sockets, fifos and devices are not source.
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &fs::Metadata) -> bool {
    false
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        fs::create_dir_all(dir.path().join("src/app")).expect("mkdir");
        fs::write(dir.path().join("src/app/main.py"), "print('hi')\n").expect("write");
        fs::create_dir_all(dir.path().join(".git/objects")).expect("mkdir");
        fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
        dir
    }

    fn names(bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(GzDecoder::new(bytes));
        a.entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn archive_is_sorted_and_skips_vcs() {
        let dir = tree();
        let a = pack(dir.path()).expect("pack");
        assert_eq!(names(&a.bytes), vec!["Dockerfile", "src/app/main.py"]);
        assert_eq!(a.files, 2);
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        let dir = tree();
        let a = pack(dir.path()).expect("pack");
        // Touch a file: content-identical trees must still match.
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        let b = pack(dir.path()).expect("pack");
        assert_eq!(a.sha256, b.sha256);
        fs::write(dir.path().join("Dockerfile"), "FROM busybox\n").expect("write");
        let c = pack(dir.path()).expect("pack");
        assert_ne!(a.sha256, c.sha256);
    }
}
